"""Loading a causal LM's weights and tokenizer from a Hugging Face id, a folder or a source object.

Every failure names what to download and where to put it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from rsvlm.contracts import MissingFileError
from rsvlm.llm.tokenizer import TokenizerSource

log = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` in 4.56.
DTYPE_KW = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def on_meta_device() -> bool:
    """True inside ``with torch.device("meta")``, where factory functions allocate on meta."""
    return torch.empty(0).device.type == "meta"


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"bfloat16"`` → ``torch.bfloat16``; None stays None."""
    if name is None:
        return None
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"torch_dtype {name!r} is not a torch dtype (use e.g. 'bfloat16', 'float16', 'float32')")
    return value


def load_tokenizer(
    source: str | TokenizerSource | None, meta: bool, trust_remote_code: bool
) -> PreTrainedTokenizerBase | None:
    """The tokenizer named by ``source`` (hub id, folder or :class:`TokenizerSource`); None without one.

    On the meta device a tokenizer that is not available locally gives None (counting parameters
    needs none: the vocabulary comes from the config).
    """
    if source is None:
        return None
    if isinstance(source, TokenizerSource):
        return source.load()
    if source == "demo":
        raise ValueError(
            "tokenizer 'demo' is now a class: write `tokenizer: {class_path: rsvlm.data.spie.corpus.SpieDemoTokenizer}` "
            "in a recipe, or pass SpieDemoTokenizer() in Python"
        )
    local = Path(source).expanduser().is_dir()
    try:
        return AutoTokenizer.from_pretrained(
            str(Path(source).expanduser()) if local else source,
            local_files_only=local or meta,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as err:
        if meta:
            log.info("no tokenizer for %s on the meta device (%s); using the config's vocab_size", source, err)
            return None
        raise OSError(
            f"could not load the tokenizer {source!r}: {err}. Download it with "
            f"`huggingface-cli download {source} --local-dir <folder>` and pass that folder."
        ) from err


def load_pretrained(model: str, dtype: torch.dtype, attn: str, trust_remote_code: bool) -> nn.Module:
    """A Hugging Face causal LM with weights, from a local folder or the hub (or its cache)."""
    folder = Path(model).expanduser()
    kwargs: dict[str, Any] = {"attn_implementation": attn, "trust_remote_code": trust_remote_code, DTYPE_KW: dtype}
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise MissingFileError(f"LLM folder {folder} has no config.json; is it a Hugging Face model folder?")
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            raise MissingFileError(
                f"LLM folder {folder} has no weights ({', '.join(WEIGHT_FILES)}). Download them with "
                f"`huggingface-cli download <hub id, e.g. Qwen/Qwen2.5-1.5B> --local-dir {folder}`"
            )
        return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **kwargs)
    try:
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except OSError as err:
        raise OSError(
            f"could not load LLM weights {model!r} from the Hugging Face hub or its cache ({err}). "
            f"Download them with `huggingface-cli download {model} --local-dir <folder>` and set "
            f"model: <folder> in the recipe."
        ) from err
