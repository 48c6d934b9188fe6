"""A Hugging Face causal LM that reads visual tokens spliced at an ``<image>`` placeholder.

:class:`CausalLM` loads a model from a Hugging Face id or a local folder (or builds a randomly
initialised one from an architecture config: a name shipped with rsvlm such as
``"qwen2.5-1.5b"``, a ``config.json`` path, or a dict), adds special tokens as real special
tokens with resized embeddings, declares which parameters train (frozen, LoRA through peft,
full, optionally the new token rows), and runs:

* :meth:`CausalLM.forward` — teacher-forced pass with the text loss on response tokens only;
* :meth:`CausalLM.generate` — decoding from left-padded prompts, returning the generated tokens'
  last-layer hidden states for a bridge such as TCP.

Built from a config inside ``with torch.device("meta"):`` it allocates nothing, which is how
``rsvlm summarize`` counts the parameters of the paper's models without weights.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PretrainedConfig

from rsvlm.llm.chat import IGNORE_INDEX, ChatFormatter, single_token_id
from rsvlm.llm.lora import LoraSettings, apply_lora, apply_trainable_tokens
from rsvlm.llm.splice import splice_visual_tokens
from rsvlm.llm.tokenizer import build_demo_tokenizer

log = logging.getLogger(__name__)

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` in 4.56.
_DTYPE_KW = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


@dataclass
class LMOutput:
    """Result of :meth:`CausalLM.forward`; L' is the spliced length (L + N - 1 with N visual tokens).

    Attributes:
        loss: mean cross-entropy of the next-token predictions on labelled positions (response
            tokens and the closing token); None without labels.
        logits: ``B×L'×V``.
        hidden_states: ``B×L'×D`` last-layer hidden states.
        attention_mask: ``B×L'``.
        response_mask: ``B×L'`` bool, True on response tokens (None when not given).
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor | None


@dataclass
class Generation:
    """Result of :meth:`CausalLM.generate`; T is the number of generated steps.

    Attributes:
        sequences: ``B×T`` new token ids (padding after a sample's end token).
        texts: decoded responses, without special tokens.
        hidden_states: ``B×T×D`` last-layer hidden states at the generated tokens' positions.
        mask: ``B×T`` bool, True up to and including the end token, False after.
        response_mask: ``B×T`` bool, ``mask`` without the end token (the response tokens, as in training).
    """

    sequences: torch.Tensor
    texts: list[str]
    hidden_states: torch.Tensor
    mask: torch.Tensor
    response_mask: torch.Tensor


def generation_masks(sequences: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which generated tokens count: ``B×T`` ids → (``mask``, ``response_mask``), both ``B×T`` bool.

    ``mask`` is True up to and including each row's first stop token and False after it (the
    padding generate() appends); ``response_mask`` is ``mask`` without the stop token.
    """
    is_stop = torch.isin(sequences, torch.tensor(stop_ids, device=sequences.device))
    after_stop = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    mask = ~after_stop
    return mask, mask & ~is_stop


# ---------------------------------------------------------------------------- configs
def shipped_configs() -> dict[str, Path]:
    """Architecture configs shipped with rsvlm: name → path of the ``config.json`` copy."""
    folder = resources.files("rsvlm.llm") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".json")}


def load_config_dict(source: str | dict[str, Any]) -> dict[str, Any]:
    """Resolve ``source`` to a plain config dict.

    Args:
        source: a shipped name (``"qwen2.5-1.5b"``), a path to a ``config.json`` or to a folder
            holding one, or a dict; a dict may name ``"base"`` (shipped name or path) whose values
            its other keys override.
    """
    if isinstance(source, dict):
        overrides = dict(source)
        base = overrides.pop("base", None)
        merged = load_config_dict(base) if base is not None else {}
        merged.update(overrides)
        return merged
    shipped = shipped_configs()
    key = str(source).lower().removesuffix(".json")
    if key in shipped:
        return json.loads(shipped[key].read_text())
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    raise FileNotFoundError(
        f"LLM config {source!r} is neither a shipped config ({sorted(shipped)}) nor a config.json file or folder"
    )


def build_config(values: dict[str, Any], trust_remote_code: bool = False) -> PretrainedConfig:
    """A transformers config from a plain dict holding ``model_type``."""
    values = dict(values)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(
            f"LLM config needs 'model_type' (e.g. 'qwen2') or a 'base' (e.g. 'qwen2.5-0.5b'); got keys {sorted(values)}"
        )
    for key in ("architectures", "transformers_version", "_name_or_path"):
        values.pop(key, None)
    return AutoConfig.for_model(model_type, trust_remote_code=trust_remote_code, **values)


def _shipped_name_for(model_id: str) -> str | None:
    name = model_id.rstrip("/").split("/")[-1].lower()
    return name if name in shipped_configs() else None


def _on_meta_device() -> bool:
    # Inside ``with torch.device("meta")`` factory functions allocate on meta.
    return torch.empty(0).device.type == "meta"


def _cache_dir() -> Path:
    return Path(os.environ.get("RSVLM_CACHE", Path.home() / ".cache" / "rsvlm")).expanduser()


def _dtype(name: str | None) -> torch.dtype | None:
    """``"bfloat16"`` → ``torch.bfloat16``; None stays None."""
    if name is None:
        return None
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"torch_dtype {name!r} is not a torch dtype (use e.g. 'bfloat16', 'float16', 'float32')")
    return value


# ---------------------------------------------------------------------------- the module
class CausalLM(nn.Module):
    """A causal LM with visual-token splicing, special tokens, LoRA and declared freezing.

    Args:
        model: Hugging Face id or local folder with weights. When constructed on the meta device
            no weights are read: the architecture comes from ``config``, the folder's
            ``config.json`` or the shipped config of the same name.
        config: architecture for a randomly initialised model: a shipped name
            (``"qwen2.5-1.5b"``), a path to a ``config.json`` (or its folder), or a dict (which may
            hold ``"base"``, a shipped name, plus overrides). A dict without its own ``vocab_size``
            gets the tokenizer's size; a name or path keeps its ``vocab_size`` (grown if the
            tokenizer is larger, never shrunk).
        tokenizer: Hugging Face id, folder, or ``"demo"`` (the offline demo tokenizer, built once
            into ``$RSVLM_CACHE/demo-tokenizer``, default ``~/.cache/rsvlm``). Default: ``model``.
        special_tokens: tokens added as special tokens (embeddings resized to fit).
        image_token: placeholder replaced by the visual tokens; added if missing above.
        lora: LoRA settings; the base model is then frozen and only the adapters train.
        freeze: freeze the base model (without LoRA: nothing of the LLM trains).
        train_new_token_embeddings: let the embedding rows of the newly added special tokens
            (other than ``image_token``) train, through a peft trainable-token delta.
        torch_dtype: dtype of the weights (``"bfloat16"``, ``"float16"``...); default float32 (not
            the checkpoint's dtype), which suits Lightning's mixed precision.
        attn_implementation: ``"sdpa"``, ``"eager"`` or ``"flash_attention_2"``.
        trust_remote_code: allow model code from the hub (off by default).
        system_prompt: system message of the chat template; None keeps the template's default.
        max_length: most text tokens of one sample (before splicing).
        gradient_checkpointing: recompute activations in backward to save memory.
    """

    def __init__(
        self,
        model: str | None = None,
        config: str | dict | None = None,
        tokenizer: str | None = None,
        special_tokens: list[str] = ["<image>"],
        image_token: str = "<image>",
        lora: LoraSettings | None = None,
        freeze: bool = True,
        train_new_token_embeddings: bool = False,
        torch_dtype: str | None = None,
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        max_length: int = 2048,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if model is None and config is None:
            raise ValueError("CausalLM needs `model` (Hugging Face id or folder) or `config` (architecture)")
        if lora is not None and not freeze:
            raise ValueError("CausalLM: lora trains adapters on a frozen base; set freeze=True or drop lora")
        self.image_token = image_token
        self.system_prompt = system_prompt
        self.max_length = max_length
        meta = _on_meta_device()
        # float32 unless asked: transformers would otherwise pick the checkpoint's or config's dtype.
        dtype = _dtype(torch_dtype) or torch.float32
        if model is not None and model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
            raise FileNotFoundError(f"LLM folder {model} does not exist")

        special = list(dict.fromkeys([*special_tokens, image_token]))
        self._tokenizer = self._load_tokenizer(tokenizer if tokenizer is not None else model, meta, trust_remote_code)
        new_tokens: list[str] = []
        if self._tokenizer is not None:
            vocab = self._tokenizer.get_vocab()
            new_tokens = [t for t in special if t not in vocab]
            # Positional flag: "keep the existing extra special tokens" (its name changed in transformers 5).
            self._tokenizer.add_special_tokens({"additional_special_tokens": special}, False)
            self.special_token_ids = {t: single_token_id(self._tokenizer, t, "special token") for t in special}
        else:
            self.special_token_ids = {}

        if model is not None and not meta:
            self.model = self._load_pretrained(model, dtype, attn_implementation, trust_remote_code)
        else:
            values = load_config_dict(config if config is not None else self._config_source(model))
            # A dict is a custom model: its vocabulary is the tokenizer's unless stated. A name or
            # path is an exact architecture: its vocab_size stays (and grows below if too small).
            if self._tokenizer is not None and isinstance(config, dict) and "vocab_size" not in config:
                values["vocab_size"] = len(self._tokenizer)
                # The base config's special ids belong to the base vocabulary; take the tokenizer's.
                for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                    if key not in config:
                        values[key] = getattr(self._tokenizer, key, None)
            hf_config = build_config(values, trust_remote_code)
            self.model = AutoModelForCausalLM.from_config(
                hf_config,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
                **{_DTYPE_KW: dtype},
            )

        if self._tokenizer is not None:
            # Never shrink: Qwen's embedding matrix is padded past the tokenizer, and the new
            # tokens fit into those spare rows.
            current = self.model.get_input_embeddings().weight.shape[0]
            if len(self._tokenizer) > current:
                self.model.resize_token_embeddings(len(self._tokenizer), mean_resizing=not meta)

        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        trainable_ids = []
        if train_new_token_embeddings and self._tokenizer is not None:
            trainable_ids = [self.special_token_ids[t] for t in new_tokens if t != image_token]
        if freeze:
            self.model.requires_grad_(False)
        # Shown in the trainable-parameter table instead of a bare "partial".
        self.trainable_mode = f"LoRA r={lora.r}" if lora is not None else None
        if lora is not None:
            self.model = apply_lora(self.model, lora, trainable_ids or None)
        elif freeze and trainable_ids:
            self.model = apply_trainable_tokens(self.model, trainable_ids)
        self._formatter: ChatFormatter | None = None

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _load_tokenizer(source: str | None, meta: bool, trust_remote_code: bool):
        if source is None:
            return None
        if source == "demo":
            return build_demo_tokenizer(_cache_dir() / "demo-tokenizer")
        local = Path(source).expanduser().is_dir()
        try:
            return AutoTokenizer.from_pretrained(
                str(Path(source).expanduser()) if local else source,
                local_files_only=local or meta,
                trust_remote_code=trust_remote_code,
            )
        except (OSError, ValueError) as err:
            if meta:
                # Counting parameters needs no tokenizer: the vocabulary comes from the config.
                log.info("no tokenizer for %s on the meta device (%s); using the config's vocab_size", source, err)
                return None
            raise OSError(
                f"could not load the tokenizer {source!r}: {err}. Download it with "
                f"`huggingface-cli download {source} --local-dir <folder>` and pass that folder."
            ) from err

    @staticmethod
    def _config_source(model: str) -> str:
        folder = Path(model).expanduser()
        if (folder / "config.json").is_file():
            return str(folder)
        name = _shipped_name_for(model)
        if name is None:
            raise ValueError(
                f"building {model!r} on the meta device needs its architecture: pass `config` "
                f"(a config.json path or one of {sorted(shipped_configs())}) or a local folder with config.json"
            )
        return name

    @staticmethod
    def _load_pretrained(model: str, dtype: torch.dtype, attn: str, trust_remote_code: bool) -> nn.Module:
        folder = Path(model).expanduser()
        kwargs: dict[str, Any] = {"attn_implementation": attn, "trust_remote_code": trust_remote_code, _DTYPE_KW: dtype}
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"LLM folder {folder} has no config.json; is it a Hugging Face model folder?")
            if not any((folder / name).is_file() for name in _WEIGHT_FILES):
                raise FileNotFoundError(
                    f"LLM folder {folder} has no weights ({', '.join(_WEIGHT_FILES)}). Download them with "
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

    # ------------------------------------------------------------------ properties
    @property
    def base_model(self) -> nn.Module:
        """The underlying transformers model (inside any peft wrapper)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def hidden_size(self) -> int:
        """D_llm, the width of the embeddings and hidden states."""
        return int(self.base_model.config.hidden_size)

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer, with the special tokens added."""
        if self._tokenizer is None:
            raise RuntimeError(
                "this CausalLM was built without a tokenizer (config only, on the meta device); pass `tokenizer`"
            )
        return self._tokenizer

    @property
    def image_token_id(self) -> int:
        """Id of ``image_token`` in the tokenizer."""
        if self.image_token not in self.special_token_ids:
            raise RuntimeError(
                "this CausalLM was built without a tokenizer, so it has no image token id; pass `tokenizer`"
            )
        return self.special_token_ids[self.image_token]

    @property
    def formatter(self) -> ChatFormatter:
        """The :class:`ChatFormatter` matching this model's tokenizer and settings (picklable)."""
        if self._formatter is None:
            self._formatter = ChatFormatter(self.tokenizer, self.image_token, self.system_prompt, self.max_length)
        return self._formatter

    @property
    def end_token_id(self) -> int:
        """Id of the token that closes a response (``<|im_end|>`` for ChatML tokenizers)."""
        return self.formatter.end_token_id

    # ------------------------------------------------------------------ helpers
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``B×L`` ids → ``B×L×D`` input embeddings (through any trainable-token adapter)."""
        return self.model.get_input_embeddings()(input_ids)

    def _splice(self, input_ids, attention_mask, visual_tokens, labels=None, response_mask=None):
        embeds = self.embed(input_ids)
        if visual_tokens is None:
            if (input_ids == self.image_token_id).any():
                raise ValueError(f"input_ids hold {self.image_token!r} but no visual_tokens were given")
            return embeds, attention_mask, labels, response_mask
        s = splice_visual_tokens(
            embeds, input_ids, self.image_token_id, visual_tokens, attention_mask, labels, response_mask
        )
        return s.embeds, s.attention_mask, s.labels, s.response_mask

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual_tokens: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
    ) -> LMOutput:
        """Teacher-forced pass over right-padded sequences.

        Args:
            input_ids: ``B×L`` with one image token per sample when ``visual_tokens`` is given.
            attention_mask: ``B×L``.
            visual_tokens: ``B×N×D`` tokens spliced at the image token.
            labels: ``B×L`` target ids, -100 where no loss applies (from :class:`ChatFormatter`).
            response_mask: ``B×L`` bool, True on response tokens.

        Returns:
            :class:`LMOutput` over the spliced length ``L' = L + N - 1``.
        """
        embeds, mask, labels, response_mask = self._splice(
            input_ids, attention_mask, visual_tokens, labels, response_mask
        )
        out = self.model(
            inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, use_cache=False, return_dict=True
        )
        loss = None
        if labels is not None:
            # Position t predicts token t+1.
            target = labels[:, 1:]
            logits = out.logits[:, :-1].float()
            valid = target != IGNORE_INDEX
            total = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            loss = total / valid.sum().clamp(min=1)
        return LMOutput(loss, out.logits, out.hidden_states[-1], mask, response_mask)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        visual_tokens: torch.Tensor | None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 0.8,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
    ) -> Generation:
        """Generate responses to LEFT-padded prompts.

        Args:
            prompt_ids: ``B×P`` prompts ending with the generation prompt (one image token each).
            prompt_attention_mask: ``B×P``.
            visual_tokens: ``B×N×D`` spliced at the image token.
            max_new_tokens: most tokens generated.
            do_sample: sample (with ``temperature`` and ``top_p``) instead of greedy decoding.
            temperature: sampling temperature.
            top_p: nucleus sampling mass.
            repetition_penalty: > 1 discourages repeating generated tokens.

        Returns:
            :class:`Generation`; its hidden states come from one forward over prompt + generated
            tokens, so they equal a teacher-forced pass over the same text.
        """
        embeds, mask, _, _ = self._splice(prompt_ids, prompt_attention_mask, visual_tokens)
        stop_ids = sorted(
            {self.end_token_id, *([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])}
        )
        settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "repetition_penalty": repetition_penalty,
            "eos_token_id": stop_ids,
            "pad_token_id": self.formatter.pad_token_id,
        }
        if do_sample:
            settings.update(temperature=temperature, top_p=top_p)
        with torch.no_grad():
            # Given only inputs_embeds, a decoder-only model returns just the new tokens.
            sequences = self.model.generate(
                inputs_embeds=embeds, attention_mask=mask, generation_config=GenerationConfig(**settings)
            )
        gen_mask, response = generation_masks(sequences, stop_ids)

        full_embeds = torch.cat([embeds, self.embed(sequences)], dim=1)
        full_mask = torch.cat([mask, gen_mask.to(mask.dtype)], dim=1)
        # Left padding: positions count attended tokens only, as generate() does.
        position_ids = (full_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=full_embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        hidden = out.hidden_states[-1][:, embeds.shape[1] :]
        texts = [
            self.tokenizer.decode(seq[keep].tolist(), skip_special_tokens=True)
            for seq, keep in zip(sequences, response)
        ]
        return Generation(sequences, texts, hidden, gen_mask, response)
