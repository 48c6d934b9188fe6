"""Offline tokenizers: a byte-level BPE trained on a given corpus, and the sources CausalLM loads.

:func:`build_bpe_tokenizer` trains a byte-level BPE (the `tokenizers` library, the same
algorithm family as Qwen2's tokenizer) on a list of sentences, so that demos and tests run
without downloading anything. It has Qwen2's special tokens (``<|endoftext|>`` as padding,
``<|im_start|>``, ``<|im_end|>`` as EOS) and a Qwen2-style ChatML chat template, so code written
against it works unchanged with a real Qwen2.5 tokenizer. Byte-level BPE can encode any text,
so unseen words still tokenize (into more pieces).

:class:`TokenizerSource` is what ``CausalLM(tokenizer=...)`` accepts besides a Hugging Face id
or a folder: any object whose :meth:`~TokenizerSource.load` returns a tokenizer, built by
jsonargparse from a ``class_path`` in a recipe (the SPIE demo tokenizer is one, kept with the
SPIE data whose sentences it is trained on).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rsvlm.contracts import OutputExistsError

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

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

# Marks a folder written completely by build_bpe_tokenizer and holds its fingerprint (written
# last, so a folder left half-written by an interrupted build is rebuilt rather than loaded).
# The name predates the generic builder; it stays so that folders built earlier stay valid.
DONE_MARKER = "rsvlm-demo-tokenizer.done"


class TokenizerSource:
    """A tokenizer that is not a Hugging Face id or folder: subclasses say how to make it.

    Subclasses take plain typed constructor arguments (so that a recipe names them with
    ``class_path`` / ``init_args``) and implement :meth:`load`.
    """

    def load(self) -> PreTrainedTokenizerBase:
        """Build or load the tokenizer (the caller adds its special tokens afterwards)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load()")


def rsvlm_cache_dir() -> Path:
    """Where rsvlm keeps what it builds once: ``$RSVLM_CACHE``, default ``~/.cache/rsvlm``."""
    return Path(os.environ.get("RSVLM_CACHE", Path.home() / ".cache" / "rsvlm")).expanduser()


def bpe_fingerprint(corpus: Sequence[str], vocab_size: int, individual_digits: bool = False) -> str:
    """Identifies one build: a hash of the corpus (in order), the chat template, the special tokens,
    the vocabulary size and the digit splitting (16 hex digits)."""
    digest = hashlib.sha256()
    # The digit flag enters only when set, so builds made before it existed keep their fingerprint.
    digits = ("individual_digits",) if individual_digits else ()
    for part in (*corpus, CHATML_TEMPLATE, *SPECIAL_TOKENS, str(vocab_size), *digits):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def train_bpe(corpus: Sequence[str], vocab_size: int, individual_digits: bool = False) -> Tokenizer:
    """A byte-level BPE trained on ``corpus`` (deterministic: the same corpus gives the same merges).

    Args:
        corpus: training sentences, in order.
        vocab_size: the vocabulary the trainer aims for (bytes + special tokens + merges); training
            stops earlier when the corpus has no more pairs to merge.
        individual_digits: every digit its own token, as Qwen2's and LLaMA's tokenizers split
            numbers (``"0.25"`` → ``0 . 2 5``), so a coordinate is written digit by digit instead of
            as one of a hundred unrelated word tokens.
    """
    tok = Tokenizer(models.BPE())
    # Byte-level like GPT-2/Qwen2: every string is encodable, no unknown token is needed.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if individual_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok


def wrap_chatml(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around ``tok`` with Qwen2's special tokens and ChatML template."""
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


def build_bpe_tokenizer(
    folder: str | Path,
    corpus: Sequence[str],
    vocab_size: int,
    label: str = "BPE",
    individual_digits: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a ChatML byte-level BPE on ``corpus`` into ``folder``, or load it from there.

    The tokenizer is saved with ``save_pretrained`` so that ``AutoTokenizer.from_pretrained(folder)``
    loads it. When ``folder`` already holds the same build (checked by :func:`bpe_fingerprint`) it
    is loaded instead of retrained; a stale build, or one this transformers release cannot read
    (saved by another), is replaced. Training is deterministic, so every
    process builds the same vocabulary, and the folder is written atomically, so concurrent
    builders (DataLoader workers, DDP ranks) never load a half-written one.

    Args:
        folder: where the tokenizer files live (created if missing).
        corpus: training sentences, in order.
        vocab_size: target vocabulary size of the BPE trainer.
        label: what the tokenizer is called in errors (``"demo"`` → "not a demo tokenizer folder").
        individual_digits: split numbers into single digits (see :func:`train_bpe`).

    Returns:
        A fast tokenizer with a vocabulary of about ``vocab_size`` entries (fewer when the corpus
        runs out of merges).

    Raises:
        FileExistsError: ``folder`` holds files that are not a tokenizer build.
    """
    folder = Path(folder).expanduser()
    marker = folder / DONE_MARKER
    fingerprint = bpe_fingerprint(corpus, vocab_size, individual_digits)
    if marker.is_file() and marker.read_text().strip() == fingerprint:
        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (ValueError, OSError, KeyError):
            # Saved by another transformers release (5.x names a tokenizer class 4.x lacks):
            # the build is deterministic, so it is rebuilt below with this one.
            pass
    if folder.exists() and not marker.is_file() and any(folder.iterdir()):
        raise OutputExistsError(f"{folder} exists and is not a {label} tokenizer folder; choose an empty or new folder")

    fast = wrap_chatml(train_bpe(corpus, vocab_size, individual_digits))
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Write into a private temporary folder and move it into place.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    stale = folder.parent / f".{folder.name}.stale-{os.getpid()}"
    try:
        fast.save_pretrained(str(tmp))
        (tmp / DONE_MARKER).write_text(fingerprint + "\n")
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
