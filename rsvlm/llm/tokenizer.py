"""A small offline tokenizer for demos and tests.

:func:`build_demo_tokenizer` trains a byte-level BPE (the `tokenizers` library, the same
algorithm family as Qwen2's tokenizer) on a built-in corpus of remote-sensing description
sentences, so that the demo recipe and the tests run without downloading anything. It has
Qwen2's special tokens (``<|endoftext|>`` as padding, ``<|im_start|>``, ``<|im_end|>`` as EOS)
and a Qwen2-style ChatML chat template, so code written against it works unchanged with a real
Qwen2.5 tokenizer. Byte-level BPE can encode any text, so unseen words still tokenize (into
more pieces).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

#: Vocabulary the BPE trainer aims for (bytes + special tokens + merges). Training stops earlier
#: when the corpus has no more pairs to merge.
DEMO_VOCAB_SIZE = 1536

#: Qwen2's ChatML template: a default system turn when none is given, then
#: ``<|im_start|>{role}\n{content}<|im_end|>\n`` per message, and ``<|im_start|>assistant\n``
#: as the generation prompt.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Marks a folder written completely by build_demo_tokenizer and holds its fingerprint (written
# last, so a folder left half-written by an interrupted build is rebuilt rather than loaded).
_DONE_MARKER = "rsvlm-demo-tokenizer.done"

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
    """The built-in training corpus: a deterministic list of instruction and description sentences.

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
    from rsvlm.data.spie.describe import NUMBER_WORDS

    lines.extend([" ".join(NUMBER_WORDS), " ".join(w.capitalize() for w in NUMBER_WORDS)] * 50)
    # The chat template's own words, so that the prompt scaffolding costs few tokens.
    lines.extend(["system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 50)
    # Every number and the punctuation a description uses, so they stay short in tokens.
    lines.append(" ".join(str(i) for i in range(0, 1001)))
    lines.append("Yes. No. Yes, it is. No, it is not! (see: left; right) \"quoted\" 'single' - / % + = ? ...")
    return lines


def spie_corpus(seed: int = 0, masks: int = 120, size: int = 32) -> list[str]:
    """SPIE text as this library writes it: instructions with APG spectral prompts (both
    attribute styles, both templates) and the offline describer's responses, for random masks.

    With these in the corpus the demo's prompts and responses take about half as many tokens
    (keys such as ``'Size of area'`` and the describer's phrases become few tokens), which
    makes the demo LM faster and lets it find the category word in a shorter prompt.
    """
    import numpy as np

    from rsvlm.data.spie.apg import format_prompt, instruction, region_attributes
    from rsvlm.data.spie.describe import AttributeDescriber

    rng = np.random.default_rng(seed)
    describers = [AttributeDescriber(seed=s, max_regions=3) for s in range(3)]
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
        lines.append(instruction(category, None, "plain"))
        lines.append(describers[i % 3](image, mask, category, "demo"))
    return lines


def _train(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # Byte-level like GPT-2/Qwen2: every string is encodable, no unknown token is needed.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(demo_corpus(), trainer=trainer)
    return tok


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "right"
    return fast


def demo_fingerprint(vocab_size: int = DEMO_VOCAB_SIZE) -> str:
    """Identifies one demo-tokenizer build: a hash of the corpus, the template and the vocabulary size."""
    digest = hashlib.sha256()
    for part in (*demo_corpus(), CHATML_TEMPLATE, *SPECIAL_TOKENS, str(vocab_size)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_demo_tokenizer(folder: str | Path, vocab_size: int = DEMO_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train (or load from ``folder``) the offline demo tokenizer.

    The tokenizer is saved with ``save_pretrained`` so that ``AutoTokenizer.from_pretrained(folder)``
    loads it. When ``folder`` already holds the same build (same corpus and settings, checked by a
    fingerprint) it is loaded instead of retrained; a stale build is replaced. Training is
    deterministic, so every process builds the same vocabulary.

    Args:
        folder: where the tokenizer files live (created if missing).
        vocab_size: target vocabulary size of the BPE trainer.

    Returns:
        A fast tokenizer with a vocabulary of about ``vocab_size`` entries (fewer when the corpus
        runs out of merges).
    """
    folder = Path(folder).expanduser()
    marker = folder / _DONE_MARKER
    fingerprint = demo_fingerprint(vocab_size)
    if marker.is_file() and marker.read_text().strip() == fingerprint:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if folder.exists() and not marker.is_file() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not a demo tokenizer folder; choose an empty or new folder")

    fast = _wrap(_train(vocab_size))
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Write into a private temporary folder and move it into place, so that concurrent builders
    # (DataLoader workers, DDP ranks) never load a half-written folder.
    tmp = Path(tempfile.mkdtemp(prefix=".demo-tokenizer-", dir=folder.parent))
    stale = folder.parent / f".{folder.name}.stale-{os.getpid()}"
    try:
        fast.save_pretrained(str(tmp))
        (tmp / _DONE_MARKER).write_text(fingerprint + "\n")
        if folder.exists():
            os.replace(folder, stale)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process moved its identical build into place first: use that one.
            if not marker.is_file():
                raise
    finally:
        for leftover in (tmp, stale):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
