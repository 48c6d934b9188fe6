"""Response generators: the answer half of a SPIE sample when a dataset has none.

Every generator is called as ``generator(image, mask, category, bands) -> str`` with

* ``image``: C×H×W multispectral array,
* ``mask``: the TRUE H×W binary mask of ``category`` (not APG's coarse mask),
* ``category``: vegetation, water or building(s),
* ``bands``: the image's band spec (preset name, list of names or ``BandSpec``).

Two implementations:

* :class:`AttributeDescriber` (default, offline, fast, deterministic): a fluent paragraph
  built from the true mask's connected regions (how many, how much of the scene, size bins
  and 3×3-grid locations as in APG, and the mean spectral index inside vs outside). Two
  options made for the offline demo's small LM, off by default (real SPIE builds read as
  plain descriptions): ``category_first`` ("As for water, ...") and ``distinct_empty_openings``.
* :class:`HFImageTextDescriber`: a Hugging Face image-text-to-text model (any checkpoint
  loadable with ``AutoProcessor`` + ``AutoModelForImageTextToText``) prompted with an RGB
  composite of the image and the true mask's attributes, sampled with temperature 0.8 and
  top-p 0.9 as in the SPEX paper.

Both are picklable so that parallel SPIE builders can ship them to worker processes (the HF
model is loaded lazily in each process and dropped when pickled).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from rsvlm.data.bands import BandSpec, band_spec
from rsvlm.data.indices import INDEX_BANDS, INDEX_FOR_CATEGORY, normalize_category
from rsvlm.data.spie.apg import format_prompt, region_attributes

BandsLike = BandSpec | str | Sequence[str]


class ResponseGenerator(ABC):
    """Interface of response generators: ``(image C×H×W, mask H×W, category, bands) -> str``."""

    @abstractmethod
    def __call__(self, image: np.ndarray, mask: np.ndarray, category: str, bands: BandsLike) -> str:
        """A description of the ``category`` regions given by ``mask``."""


# Phrases for APG's grid cells and sizes.
_LOCATION_PHRASE = {
    "top-left": "the top-left corner",
    "top-center": "the upper part",
    "top-right": "the top-right corner",
    "middle-left": "the left side",
    "center": "the center",
    "middle-right": "the right side",
    "bottom-left": "the bottom-left corner",
    "bottom-center": "the lower part",
    "bottom-right": "the bottom-right corner",
}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")

_EMPTY = (
    "There are no {cat} regions in this image.",
    "No {cat} areas can be seen in this image.",
    "The image does not contain any {cat} regions.",
)
# Empty answers that open with a word no other answer opens with ("There are no" against "There
# are four" would be a choice between one token and a dozen number words: greedy decoding of a
# small, unsure model then says "no" whenever its count is spread over several numbers).
_EMPTY_DISTINCT = (
    "No {cat} regions can be seen in this image.",
    "None of this image is covered by {cat}.",
    "Nowhere in this image is there any {cat}.",
)
# {pct} reads "about 13%" or "less than 1%".
_ONE = (
    "The image contains a single {size} {cat} region in {loc} of the scene, covering {pct} of the image.",
    "There is one {cat} region in this image: {a_size} area located in {loc}, which covers {pct} of the scene.",
    "A single {cat} area is visible. It is {size} and lies in {loc} of the image, taking up {pct} of it.",
)
_MANY = (
    "The image contains {n} separate {cat} regions, which together cover {pct} of the scene.",
    "There are {n} {cat} regions in this image, covering {pct} of it in total.",
    "In total, {n} distinct {cat} areas can be seen, together taking up {pct} of the image.",
)
_LARGEST = (
    "The largest is {a_size} region in {loc}.",
    "The biggest one is {size} in size and lies in {loc}.",
    "The main {cat} area is {size} and sits in {loc} of the image.",
)
_OTHERS = (
    "The others include {items}.",
    "Further {cat} regions are {items}.",
    "Besides it, the image also shows {items}.",
)
# Openings that name the category before anything that must be read off the image.
_LEAD = ("As for {cat}, ", "Regarding {cat}, ", "Looking at {cat}, ")
_INDEX = (
    "These {cat} areas have a mean {index} of {inside:.2f}, compared with {outside:.2f} for the rest of the image.",
    "Their mean {index} is {inside:.2f}, against {outside:.2f} elsewhere in the scene.",
)


def _a(size: str) -> str:
    return ("an " if size[0] in "aeiou" else "a ") + size


def _pct(fraction: float) -> str:
    p = 100.0 * fraction
    return "less than 1%" if 0 < p < 1 else f"about {p:.0f}%"


def _open(text: str, lead: str) -> str:
    """``text`` after the opening ``lead`` (its first letter lowered when there is one)."""
    return lead + text[0].lower() + text[1:] if lead else text


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


class AttributeDescriber(ResponseGenerator):
    """Offline describer built from the true mask's region attributes.

    The text depends only on ``seed`` and the inputs (not on call order), so a rerun or a
    parallel build gives identical responses; different seeds vary the phrasing.

    Args:
        seed: phrasing seed.
        connectivity: 8 or 4, for counting regions (as in APG).
        max_regions: how many regions are described individually (largest first).
        mention_index: add the mean category index inside vs outside the mask when the
            image has the bands for it.
        category_first: open with the category ("As for water, there are ..."). A model that
            learns these responses makes copying the category, which the instruction gives,
            its first decision, before the counts and sizes it must infer from the image; the
            generated category word then reaches the mask decoder through TCP's pooled
            prompts, where a wrong one makes the decoder extract the wrong class. Off by
            default; the offline demo's generated data turns it on.
        distinct_empty_openings: empty answers open with words no other answer opens with
            ("None of ...", "Nowhere ...") instead of the plain "There are no ...", so that a small
            model's greedy decoding does not say "no" when unsure of a count. Off by default;
            the offline demo's generated data turns it on.
    """

    def __init__(
        self,
        seed: int = 0,
        connectivity: int = 8,
        max_regions: int = 4,
        mention_index: bool = True,
        category_first: bool = False,
        distinct_empty_openings: bool = False,
    ) -> None:
        if max_regions < 1:
            raise ValueError(f"AttributeDescriber: max_regions must be ≥ 1, got {max_regions}")
        self.seed = seed
        self.connectivity = connectivity
        self.max_regions = max_regions
        self.mention_index = mention_index
        self.category_first = category_first
        self.distinct_empty_openings = distinct_empty_openings

    def __call__(self, image: np.ndarray, mask: np.ndarray, category: str, bands: BandsLike) -> str:
        cat = normalize_category(category)
        m = np.asarray(mask).astype(bool, copy=False)
        if m.ndim != 2:
            raise ValueError(f"AttributeDescriber: mask must be H×W, got shape {m.shape}")
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[1:] != m.shape:
            raise ValueError(f"AttributeDescriber: image must be C×H×W with H×W = {m.shape}, got shape {img.shape}")
        rng = np.random.default_rng(
            [self.seed, zlib.crc32(np.packbits(m).tobytes()), zlib.crc32(cat.encode()), m.shape[0], m.shape[1]]
        )
        pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731

        structure = ndimage.generate_binary_structure(2, 2 if self.connectivity == 8 else 1)
        n = int(ndimage.label(m, structure=structure)[1]) if m.any() else 0
        # The opening is drawn last, so that the rest reads as without it.
        lead = lambda: pick(_LEAD).format(cat=cat) if self.category_first else ""  # noqa: E731
        if n == 0:
            empty = _EMPTY_DISTINCT if self.distinct_empty_openings else _EMPTY
            return _open(pick(empty).format(cat=cat), lead())
        regions = region_attributes(m, style="paper", connectivity=self.connectivity, max_regions=self.max_regions)
        pct = _pct(float(m.mean()))
        first = regions[0]
        size, loc = first["Size of area"], _LOCATION_PHRASE[first["Location"]]
        if n == 1:
            parts = [pick(_ONE).format(cat=cat, size=size, a_size=_a(size), loc=loc, pct=pct)]
        else:
            parts = [
                pick(_MANY).format(cat=cat, n=_number(n), pct=pct),
                pick(_LARGEST).format(cat=cat, size=size, a_size=_a(size), loc=loc),
            ]
            items = [f"{_a(r['Size of area'])} one in {_LOCATION_PHRASE[r['Location']]}" for r in regions[1:]]
            rest = n - len(regions)
            if rest > 0:
                items.append(f"{_number(rest)} smaller one{'s' if rest > 1 else ''}")
            if items:
                listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
                parts.append(pick(_OTHERS).format(cat=cat, items=listed))
        if self.mention_index:
            note = self._index_note(img, m, cat, bands, pick)
            if note:
                parts.append(note)
        return _open(" ".join(parts), lead())

    @staticmethod
    def _index_note(image: np.ndarray, mask: np.ndarray, cat: str, bands: BandsLike, pick: Any) -> str | None:
        from rsvlm.data.indices import category_index

        spec = band_spec(bands)
        name = INDEX_FOR_CATEGORY[cat]
        if not all(spec.has(b) for b in INDEX_BANDS[name]) or len(spec) != image.shape[0]:
            return None
        idx = category_index(image, cat, spec)
        finite = np.isfinite(image).all(axis=0)
        inside, outside = idx[mask & finite], idx[~mask & finite]
        if inside.size == 0 or outside.size == 0:
            return None
        return pick(_INDEX).format(
            cat=cat, index=name.upper(), inside=float(inside.mean()), outside=float(outside.mean())
        )


def rgb_composite(
    image: np.ndarray, bands: BandsLike, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2.0, 98.0)
) -> np.ndarray:
    """uint8 H×W×3 display composite of a C×H×W image.

    Uses red/green/blue when present, else false colour nir/red/green, else the first three
    bands (a single band is repeated). Each channel is linearly stretched between its
    ``percentiles`` over valid finite pixels; invalid pixels are black.
    """
    spec = band_spec(bands)
    img = np.asarray(image, dtype=np.float32)
    spec.check_count(img.shape[0])
    for names in (("red", "green", "blue"), ("nir", "red", "green")):
        if all(spec.has(n) for n in names):
            chans = [spec.index(n) for n in names]
            break
    else:
        chans = [min(i, img.shape[0] - 1) for i in range(3)]
    ok = np.isfinite(img[chans]).all(axis=0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    out = np.zeros(img.shape[1:] + (3,), dtype=np.uint8)
    if not ok.any():
        return out
    for j, c in enumerate(chans):
        lo, hi = np.percentile(img[c][ok], percentiles)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        with np.errstate(invalid="ignore"):
            v = np.clip((img[c] - lo) * scale, 0, 255)
        out[..., j] = np.where(ok, np.nan_to_num(v), 0).astype(np.uint8)
    return out


DEFAULT_HF_PROMPT = (
    "This is a remote sensing image. Its {category} regions have these attributes "
    "(size, centroid, location on a 3x3 grid, bounding box): {attributes} "
    "Please provide a detailed description of the {category} regions: how many "
    "there are, their sizes, shapes and where they are in the image."
)


class HFImageTextDescriber(ResponseGenerator):
    """Responses from a Hugging Face image-text-to-text model.

    The model sees an RGB composite of the image (:func:`rgb_composite`) and a text prompt
    built from ``prompt`` with ``{category}`` and ``{attributes}`` (the true mask's APG
    attributes) filled in, wrapped in the processor's chat template.

    Args:
        model: Hugging Face id or local folder holding the model and its processor.
        temperature: sampling temperature (0.8 as in SPEX).
        top_p: nucleus sampling threshold (0.9 as in SPEX).
        max_new_tokens: longest response.
        prompt: text template with optional ``{category}`` and ``{attributes}`` fields.
        attribute_style: APG style of ``{attributes}``.
        device: torch device string for the model.
        dtype: torch dtype name for the weights ("auto" keeps the checkpoint's).
        do_sample: sample (True, as in SPEX) or decode greedily.
        seed: when set, sampling is seeded per call from (seed, mask) inside a forked RNG, so
            results are reproducible and the global RNG is left untouched.
        trust_remote_code: allow model code from the hub (off by default: it runs code).
        local_files_only: never contact the hub.
    """

    def __init__(
        self,
        model: str,
        temperature: float = 0.8,
        top_p: float = 0.9,
        max_new_tokens: int = 256,
        prompt: str = DEFAULT_HF_PROMPT,
        attribute_style: Literal["paper", "released"] = "released",
        device: str = "cpu",
        dtype: str = "auto",
        do_sample: bool = True,
        seed: int | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
    ) -> None:
        self.model_name = model
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.attribute_style = attribute_style
        self.device = device
        self.dtype = dtype
        self.do_sample = do_sample
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self.local_files_only = local_files_only
        self._model: Any = None
        self._processor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Ship the configuration, not the weights: each process loads its own copy.
        state = self.__dict__.copy()
        state["_model"] = None
        state["_processor"] = None
        return state

    def load(self) -> tuple[Any, Any]:
        """Load (once) and return ``(processor, model)``."""
        if self._model is None:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            kw = dict(trust_remote_code=self.trust_remote_code, local_files_only=self.local_files_only)
            try:
                processor = AutoProcessor.from_pretrained(self.model_name, **kw)
                if self.dtype != "auto":
                    kw["dtype"] = getattr(torch, self.dtype)
                model = AutoModelForImageTextToText.from_pretrained(self.model_name, **kw)
            except (OSError, ValueError) as exc:
                raise OSError(
                    f"HFImageTextDescriber: cannot load image-text-to-text model "
                    f"{self.model_name!r} ({exc}). Give a local folder holding the model and "
                    f"its processor (save_pretrained), or a Hugging Face id that is downloaded "
                    f"(e.g. `hf download {self.model_name}`) or reachable."
                ) from exc
            self._processor, self._model = processor, model.to(self.device).eval()
        return self._processor, self._model

    def text(self, mask: np.ndarray, category: str) -> str:
        """The text prompt for a mask and category (before the chat template)."""
        cat = normalize_category(category)
        attrs = format_prompt(region_attributes(np.asarray(mask).astype(bool), style=self.attribute_style), cat)
        return self.prompt.format(category=cat, attributes=attrs)

    def __call__(self, image: np.ndarray, mask: np.ndarray, category: str, bands: BandsLike) -> str:
        import torch
        from PIL import Image

        processor, model = self.load()
        picture = Image.fromarray(rgb_composite(image, bands))
        text = self.text(mask, category)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        if getattr(processor, "chat_template", None):
            chat = processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            chat = f"{getattr(processor, 'image_token', '<image>')}\n{text}"
        inputs = processor(images=picture, text=chat, return_tensors="pt").to(self.device)
        # Some processors return token_type_ids, which generate() refuses before transformers 5.
        inputs.pop("token_type_ids", None)
        gen_kw = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample)
        if self.do_sample:
            gen_kw.update(temperature=self.temperature, top_p=self.top_p)
        # Fork only the RNGs that sampling uses, so seeding here leaves the caller's alone.
        devices = [] if torch.device(self.device).type == "cpu" else None
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            if self.seed is not None:
                torch.manual_seed(self.seed + zlib.crc32(np.packbits(np.asarray(mask).astype(bool)).tobytes()))
            out = model.generate(**inputs, **gen_kw)
        new = out[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new, skip_special_tokens=True)[0].strip()
