"""The SPIE demo tokenizer: a byte-level BPE trained on the sentences SPIE data is written in.

:class:`SpieDemoTokenizer` trains :func:`rsvlm.llm.tokenizer.build_bpe_tokenizer` on
:func:`demo_corpus` (remote-sensing instructions and descriptions, and SPIE text as this library
writes it) once into ``$RSVLM_CACHE/demo-tokenizer``, so that the demo recipe and the tests run
without downloading anything. A recipe names it as
``tokenizer: {class_path: rsvlm.data.spie.corpus.SpieDemoTokenizer}``.

The corpus, its order and the vocabulary size fix the demo's vocabulary, and the demo's
measured numbers depend on it: change them only together with those numbers.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from rsvlm.data.indices import normalize_category
from rsvlm.data.spie.apg import format_prompt, instruction, region_attributes
from rsvlm.data.spie.describe import NUMBER_WORDS, AttributeDescriber
from rsvlm.llm.tokenizer import TokenizerSource, bpe_fingerprint, build_bpe_tokenizer, rsvlm_cache_dir

#: Vocabulary the BPE trainer aims for (bytes + special tokens + merges). Training stops earlier
#: when the corpus has no more pairs to merge.
DEMO_VOCAB_SIZE = 1536

_CLASSES = [
    "vegetation",
    "water",
    "buildings",
    "roads",
    "bare soil",
    "farmland",
    "forest",
    "grassland",
    "river",
    "lake",
    "wetland",
    "cloud",
    "shadow",
    "snow",
    "impervious surface",
    "cropland",
    "trees",
    "shrubs",
    "urban area",
    "coastline",
    "sand",
    "rock",
    "ice",
    "parking lot",
]
_SIZES = ["tiny", "small", "medium", "large", "very large", "narrow", "wide", "elongated", "compact"]
_LOCATIONS = [
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
    "upper left",
    "upper right",
    "lower left",
    "lower right",
    "middle",
]
_SHAPES = ["patch", "region", "strip", "cluster", "area", "band", "block", "belt", "pond", "field"]
_SPECTRAL = [
    "high NDVI",
    "low NDVI",
    "high NDWI",
    "low NDWI",
    "strong near-infrared reflectance",
    "weak red reflectance",
    "high reflectance in the green band",
    "low reflectance in the SWIR band",
    "a bright signature",
    "a dark signature",
    "a uniform texture",
    "a rough texture",
]
_INSTRUCTIONS = [
    "Please segment the {c} in this image.",
    "Describe the {c} in the image and segment it.",
    "Where is the {c} in this image?",
    "Find all {c} in the scene.",
    "Can you extract the {c} from this multispectral image?",
    "Identify the {c} and describe its location.",
    "Segment the {c}.",
    "What does the {c} look like in this image?",
]
_RESPONSES = [
    "The image shows a {s} {c} {sh} in the {l} of the scene, covering about {n}% of the image.",
    "There is a {s} {sh} of {c} located at the {l}.",
    "The {c} appears as a {s} {sh} with {sp}, mostly in the {l} part.",
    "A {s} {c} {sh} lies near the {l}; it has {sp} and covers {n} percent of the area.",
    "No {c} is visible in the {l}, but a {s} {sh} is found near the {l2}.",
    "The {c} occupies {n}% of the image, from the {l} to the {l2}.",
    "About {k} {c} {sh}s are present, the largest one in the {l}.",
    "The mean index value of the {c} is {f}, and its area is {a} pixels.",
]


def demo_corpus(seed: int = 0, sentences_per_template: int = 400) -> list[str]:
    """The demo tokenizer's training corpus: a deterministic list of instruction and description sentences.

    Args:
        seed: seed of the private ``random.Random`` that fills the templates.
        sentences_per_template: how many sentences each response template yields.
    """
    rng = random.Random(seed)
    lines: list[str] = []
    for template, c in itertools.product(_INSTRUCTIONS, _CLASSES):
        lines.append(template.format(c=c))
        lines.append(template.format(c=c.capitalize()))
    for template in _RESPONSES:
        for _ in range(sentences_per_template):
            lines.append(
                template.format(
                    c=rng.choice(_CLASSES),
                    s=rng.choice(_SIZES),
                    sh=rng.choice(_SHAPES),
                    l=rng.choice(_LOCATIONS),
                    l2=rng.choice(_LOCATIONS),
                    sp=rng.choice(_SPECTRAL),
                    n=rng.randint(0, 100),
                    k=rng.randint(2, 12),
                    f=f"{rng.uniform(-1, 1):.2f}",
                    a=rng.randint(10, 262144),
                )
            )
    lines.extend(spie_corpus(seed))
    # Counts are written as words; each one a whole token keeps a count one decision.
    lines.extend([" ".join(NUMBER_WORDS), " ".join(w.capitalize() for w in NUMBER_WORDS)] * 50)
    # The chat template's own words, so that the prompt scaffolding costs few tokens.
    lines.extend(["system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 50)
    # Every number and the punctuation a description uses, so they stay short in tokens.
    lines.append(" ".join(str(i) for i in range(0, 1001)))
    lines.append("Yes. No. Yes, it is. No, it is not! (see: left; right) \"quoted\" 'single' - / % + = ? ...")
    return lines


_PUBLISHED_PLAIN_INSTRUCTION = (
    "Based on the provided image, please provide a detailed description of the {category} regions."
)


def spie_corpus(seed: int = 0, masks: int = 120, size: int = 32) -> list[str]:
    """SPIE text as this library writes it: instructions with APG spectral prompts (both
    attribute styles, both templates) and the offline describer's responses, for random masks.

    With these in the corpus the demo's prompts and responses take about half as many tokens
    (keys such as ``'Size of area'`` and the describer's phrases become few tokens), which
    makes the demo LM faster and lets it find the category word in a shorter prompt.
    """
    rng = np.random.default_rng(seed)
    # The demo's describer options, which the corpus was published with.
    describers = [
        AttributeDescriber(seed=s, max_regions=3, category_first=True, distinct_empty_openings=True) for s in range(3)
    ]
    lines: list[str] = []
    for i in range(masks):
        mask = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(0, 6))):
            y, x = rng.integers(0, size, 2)
            h, w = rng.integers(1, size // 2, 2)
            mask[y : y + h, x : x + w] = True
        category = ("vegetation", "water", "building")[i % 3]
        # A 6-band demo image whose index is high inside the mask, as in real scenes.
        image = rng.uniform(0.05, 0.3, (6, size, size)).astype(np.float32)
        image[3 if category == "vegetation" else 1 if category == "water" else 4][mask] += 0.4
        for style in ("paper", "released"):
            prompt = format_prompt(region_attributes(mask, style=style, max_regions=3), category)
            lines.append(instruction(category, prompt, "spectral"))
        # The no-spectral-prompt wording the published vocabulary was trained with (before the
        # paper's verbatim sentence replaced it): kept so the demo vocabulary does not move.
        lines.append(_PUBLISHED_PLAIN_INSTRUCTION.format(category=normalize_category(category)))
        lines.append(describers[i % 3](image, mask, category, "demo"))
    return lines


def demo_fingerprint(vocab_size: int = DEMO_VOCAB_SIZE) -> str:
    """Identifies one demo-tokenizer build: a hash of the corpus, the template and the vocabulary size."""
    return bpe_fingerprint(demo_corpus(), vocab_size)


def build_demo_tokenizer(
    folder: str | Path, vocab_size: int = DEMO_VOCAB_SIZE, individual_digits: bool = False
) -> PreTrainedTokenizerFast:
    """Train (or load from ``folder``) the demo tokenizer; see :func:`~rsvlm.llm.tokenizer.build_bpe_tokenizer`."""
    return build_bpe_tokenizer(folder, demo_corpus(), vocab_size, label="demo", individual_digits=individual_digits)


class SpieDemoTokenizer(TokenizerSource):
    """The offline demo tokenizer, built once into ``$RSVLM_CACHE/demo-tokenizer`` (default
    ``~/.cache/rsvlm``; ``demo-tokenizer-digits`` with ``individual_digits``) and loaded from there
    afterwards.

    Args:
        vocab_size: target vocabulary size of the BPE trainer.
        folder: where to build it instead of the cache.
        individual_digits: one token per digit, as Qwen2's and LLaMA's tokenizers split numbers
            (the EarthGPT-X demo writes box coordinates; by default numbers merge like words).
    """

    def __init__(
        self, vocab_size: int = DEMO_VOCAB_SIZE, folder: str | None = None, individual_digits: bool = False
    ) -> None:
        self.vocab_size = vocab_size
        self.folder = folder
        self.individual_digits = individual_digits

    def load(self) -> PreTrainedTokenizerFast:
        default = "demo-tokenizer-digits" if self.individual_digits else "demo-tokenizer"
        folder = Path(self.folder) if self.folder is not None else rsvlm_cache_dir() / default
        return build_demo_tokenizer(folder, self.vocab_size, self.individual_digits)

    def __repr__(self) -> str:
        return (
            f"SpieDemoTokenizer(vocab_size={self.vocab_size}, folder={self.folder!r}, "
            f"individual_digits={self.individual_digits})"
        )
