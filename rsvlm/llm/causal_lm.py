"""A Hugging Face causal LM that reads embeddings spliced at placeholder tokens (``<image>``, ...).

:class:`CausalLM` loads a model from a Hugging Face id or a local folder (or builds a randomly
initialised one from an architecture config: a name shipped with rsvlm such as
``"qwen2.5-1.5b"``, a ``config.json`` path, or a dict), adds special tokens as real special
tokens with resized embeddings, declares which parameters train (frozen, LoRA through peft,
full, optionally the new token rows), and runs:

* :meth:`CausalLM.forward` — teacher-forced pass with the text loss on response tokens only;
* :meth:`CausalLM.generate` — decoding from left-padded prompts, returning the generated tokens'
  last-layer hidden states for a bridge such as TCP.

Both splice visual tokens at ``image_token`` and, through ``placeholders``, any number of other
placeholder kinds and counts (see :mod:`rsvlm.llm.splice`).

Built from a config inside ``with torch.device("meta"):`` it allocates nothing, which is how
``rsvlm summarize`` counts the parameters of the paper's models without weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rsvlm.contracts import MissingFileError
from rsvlm.llm.chat import ChatFormatter, single_token_id
from rsvlm.llm.configs import architecture_values, build_config, load_config_dict
from rsvlm.llm.generation import hf_generation_config, penalty_on_every_generated_token
from rsvlm.llm.loading import DTYPE_KW, load_pretrained, load_tokenizer, on_meta_device, parse_dtype
from rsvlm.llm.lora import LoraSettings, apply_lora, apply_trainable_tokens
from rsvlm.llm.outputs import Generation, LMOutput, generation_masks
from rsvlm.llm.splice import PlaceholderEmbeds, Spliced, image_token_positions, splice_placeholders
from rsvlm.llm.text_loss import (
    LossAverage,
    LossPositions,
    check_loss_settings,
    next_token_loss,
    predicting_positions,
    token_loss,
)
from rsvlm.llm.tokenizer import TokenizerSource
from rsvlm.llm.trainable_parts import train_parts

__all__ = ["CausalLM", "Generation", "LMOutput", "LoraSettings", "generation_masks", "load_config_dict"]


class CausalLM(nn.Module):
    """A causal LM with placeholder splicing (visual tokens and more), special tokens, LoRA and declared freezing.

    Args:
        model: Hugging Face id or local folder with weights. When constructed on the meta device
            no weights are read: the architecture comes from ``config``, the folder's
            ``config.json`` or the shipped config of the same name.
        config: architecture for a randomly initialised model: a shipped name
            (``"qwen2.5-1.5b"``), a path to a ``config.json`` (or its folder), or a dict (which may
            hold ``"base"``, a shipped name, plus overrides). A dict without its own ``vocab_size``
            gets the tokenizer's size; a name or path keeps its ``vocab_size`` (grown if the
            tokenizer is larger, never shrunk).
        tokenizer: Hugging Face id, folder, or a :class:`~rsvlm.llm.tokenizer.TokenizerSource` (e.g.
            ``rsvlm.data.spie.corpus.SpieDemoTokenizer``, the offline demo tokenizer). Default: ``model``.
        special_tokens: tokens added as special tokens (embeddings resized to fit), found with
            ``convert_tokens_to_ids``: ``[SEG]``, ``<region>``, ...
        image_token: placeholder replaced by the visual tokens; added if missing above.
        lora: LoRA settings; the base model is then frozen and only the adapters train.
        freeze: freeze the base model (without LoRA: nothing of the LLM trains).
        train_new_token_embeddings: let the embedding rows of the newly added special tokens
            (other than ``image_token``) train, through a peft trainable-token delta.
        train_modules: parts of the frozen base that train, chosen by module type (never by name):
            ``["attention"]`` trains every self-attention module (EarthGPT-X); also ``mlp``,
            ``norm``, ``embeddings``, ``lm_head`` (see :mod:`rsvlm.llm.trainable_parts`).
        torch_dtype: dtype of the weights (``"bfloat16"``, ``"float16"``...); default float32 (not
            the checkpoint's dtype), which suits Lightning's mixed precision.
        attn_implementation: ``"sdpa"``, ``"eager"`` or ``"flash_attention_2"``.
        trust_remote_code: allow model code from the hub (off by default).
        system_prompt: system message of the chat template; None keeps the template's default.
        max_length: most text tokens of one sample (before splicing).
        gradient_checkpointing: recompute activations in backward to save memory.
        loss_average: ``token`` (every target token weighs the same) or ``sample`` (each sample's
            tokens averaged first; :func:`rsvlm.llm.text_loss.next_token_loss`).
        loss_positions: ``targets`` (a pass with labels runs the LM head and the cross-entropy
            only where the next token has a target; ``LMOutput.logit_positions``) or ``all``
            (every position: the same loss to float32 rounding, slower; the demo recipes keep it
            for their published numbers; :data:`rsvlm.llm.text_loss.LossPositions`).
    """

    def __init__(
        self,
        model: str | None = None,
        config: str | dict | None = None,
        tokenizer: str | TokenizerSource | None = None,
        special_tokens: list[str] = ["<image>"],
        image_token: str = "<image>",
        lora: LoraSettings | None = None,
        freeze: bool = True,
        train_new_token_embeddings: bool = False,
        train_modules: list[str] | None = None,
        torch_dtype: str | None = None,
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        max_length: int = 2048,
        gradient_checkpointing: bool = False,
        loss_average: LossAverage = "token",
        loss_positions: LossPositions = "targets",
    ) -> None:
        super().__init__()
        if model is None and config is None:
            raise ValueError("CausalLM needs `model` (Hugging Face id or folder) or `config` (architecture)")
        if lora is not None and not freeze:
            raise ValueError("CausalLM: lora trains adapters on a frozen base; set freeze=True or drop lora")
        if train_modules and (lora is not None or not freeze):
            raise ValueError("CausalLM: train_modules trains parts of a frozen base; it needs freeze=True and no lora")
        self.image_token = image_token
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.loss_average = loss_average
        check_loss_settings(loss_average, loss_positions, "CausalLM")
        self.loss_positions = loss_positions
        meta = on_meta_device()
        # float32 unless asked: transformers would otherwise pick the checkpoint's or config's dtype.
        dtype = parse_dtype(torch_dtype) or torch.float32
        if model is not None and model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
            raise MissingFileError(f"LLM folder {model} does not exist")

        special = list(dict.fromkeys([*special_tokens, image_token]))
        self._tokenizer = load_tokenizer(tokenizer if tokenizer is not None else model, meta, trust_remote_code)
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
            self.model = load_pretrained(model, dtype, attn_implementation, trust_remote_code)
            self.weights_source = model  # trained-only checkpoints leave what this source restores out
        else:
            hf_config = build_config(architecture_values(config, model, self._tokenizer), trust_remote_code)
            self.model = AutoModelForCausalLM.from_config(
                hf_config,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
                **{DTYPE_KW: dtype},
            )

        if self._tokenizer is not None:
            # Never shrink: Qwen's embedding matrix is padded past the tokenizer, and the new
            # tokens fit into those spare rows.
            current = self.model.get_input_embeddings().weight.shape[0]
            if len(self._tokenizer) > current:
                self.model.resize_token_embeddings(len(self._tokenizer), mean_resizing=not meta)
                self.weights_source = None  # the new rows are sampled: no source restores them

        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        trainable_ids = []
        if train_new_token_embeddings and self._tokenizer is not None:
            trainable_ids = [self.special_token_ids[t] for t in new_tokens if t != image_token]
        if freeze:
            self.model.requires_grad_(False)
        # Shown in the trainable-parameter table instead of a bare "partial".
        self.trainable_mode = f"LoRA r={lora.r}" if lora is not None else ("+".join(train_modules or []) or None)
        if lora is not None:
            self.model = apply_lora(self.model, lora, trainable_ids or None)
        elif freeze and trainable_ids:
            self.model = apply_trainable_tokens(self.model, trainable_ids)
        if train_modules:
            # After any peft wrapping, which freezes everything but its own deltas.
            train_parts(self.base_model, train_modules)
        self._formatter: ChatFormatter | None = None

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

    # ------------------------------------------------------------------ splicing
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``B×L`` ids → ``B×L×D`` input embeddings (through any trainable-token adapter)."""
        return self.model.get_input_embeddings()(input_ids)

    def _splice(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual_tokens: torch.Tensor | None,
        placeholders: Mapping[str, PlaceholderEmbeds] | None,
        labels: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
        padding_side: str | None = None,
    ) -> Spliced:
        """Embed ``input_ids`` and splice ``visual_tokens`` at ``image_token`` and ``placeholders`` at theirs.

        Samples that grow by different amounts are re-padded on ``padding_side`` (None: inferred
        from ``attention_mask``)."""
        embeds = self.embed(input_ids)
        kinds = dict(placeholders or {})
        if visual_tokens is not None:
            if self.image_token in kinds:
                raise ValueError(f"{self.image_token!r} given both as visual_tokens and in placeholders; give one")
            b, _, d = embeds.shape
            if visual_tokens.dim() != 3 or visual_tokens.shape[0] != b or visual_tokens.shape[2] != d:
                raise ValueError(
                    f"visual_tokens must be B×N×D = {b}×N×{d} (the LLM width), got {tuple(visual_tokens.shape)}"
                )
            # visual_tokens means one image per sample: other counts are an error, not a split.
            image_token_positions(input_ids, self.image_token_id, attention_mask)
            kinds[self.image_token] = visual_tokens
        if self.image_token not in kinds and (input_ids == self.image_token_id).any():
            raise ValueError(f"input_ids hold {self.image_token!r} but no visual_tokens were given")
        if not kinds:
            return Spliced(embeds, attention_mask, labels, response_mask, input_ids)
        unknown = [name for name in kinds if name not in self.special_token_ids]
        if unknown:
            raise ValueError(
                f"placeholders {unknown} are not special tokens of this LLM; add them to special_tokens "
                f"(it has {sorted(self.special_token_ids)})"
            )
        pad = self.tokenizer.pad_token_id
        return splice_placeholders(
            embeds,
            input_ids,
            attention_mask,
            {name: (self.special_token_ids[name], value) for name, value in kinds.items()},
            labels,
            response_mask,
            pad_token_id=int(pad) if pad is not None else self.end_token_id,
            padding_side=padding_side,
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual_tokens: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
        placeholders: Mapping[str, PlaceholderEmbeds] | None = None,
    ) -> LMOutput:
        """Teacher-forced pass over right-padded sequences.

        Args:
            input_ids: ``B×L`` with one image token per sample when ``visual_tokens`` is given.
            attention_mask: ``B×L``.
            visual_tokens: ``B×N×D`` tokens spliced at the image token.
            labels: ``B×L`` target ids, -100 where no loss applies (from :class:`ChatFormatter`).
            response_mask: ``B×L`` bool, True on response tokens.
            placeholders: placeholder token (a special token, e.g. ``"<region>"``) → its embeddings:
                ``B×N×D`` or per sample ``n_i×D`` / ``c_i×n×D`` / a list of ``n_ij×D`` (see
                :mod:`rsvlm.llm.splice`); each occurrence takes the next group, in text order.

        Returns:
            :class:`LMOutput` over the spliced length ``L'`` (``L + N - 1`` with ``visual_tokens``
            alone), with the spliced ``input_ids`` and ``labels``.
        """
        s = self._splice(input_ids, attention_mask, visual_tokens, placeholders, labels, response_mask)
        # With loss_positions "targets" the LM head runs only where the loss reads a logit: its
        # B×L'×V output is the largest activation of a step at a 150k-word vocabulary.
        keep = None
        if s.labels is not None and self.loss_positions == "targets":
            keep = predicting_positions(s.labels)
        out = self.model(
            inputs_embeds=s.embeds,
            attention_mask=s.attention_mask,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
            **({} if keep is None else {"logits_to_keep": keep}),
        )
        loss = None
        if keep is not None:
            loss = token_loss(out.logits, s.labels[:, keep + 1], self.loss_average, "targets")
        elif s.labels is not None:
            loss = next_token_loss(out.logits, s.labels, self.loss_average, "all")
        hidden = out.hidden_states[-1]
        return LMOutput(loss, out.logits, hidden, s.attention_mask, s.response_mask, s.input_ids, s.labels, keep)

    def spliced_prompt(
        self, prompt_ids: torch.Tensor, prompt_attention_mask: torch.Tensor, visual_tokens: torch.Tensor
    ) -> Spliced:
        """Left-padded prompts ``B×P`` embedded with ``visual_tokens`` spliced at the image token, as
        :meth:`generate` starts from (``input_ids`` of the result mark the visual embeddings)."""
        return self._splice(prompt_ids, prompt_attention_mask, visual_tokens, None, padding_side="left")

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
        cache_implementation: str | None = None,
        placeholders: Mapping[str, PlaceholderEmbeds] | None = None,
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
            cache_implementation: Hugging Face's KV cache; None grows it per token, ``"static"``
                allocates it once (and on CUDA compiles the decode step: see ``GenerationSettings``).
            placeholders: further placeholder embeddings, as in :meth:`forward`.

        Returns:
            :class:`Generation`; its hidden states come from one forward over prompt + generated
            tokens, so they equal a teacher-forced pass over the same text.
        """
        # Prompts end where generation starts, so samples that grow less get padding on the left.
        spliced = self._splice(prompt_ids, prompt_attention_mask, visual_tokens, placeholders, padding_side="left")
        embeds, mask = spliced.embeds, spliced.attention_mask
        stop_ids = sorted(
            {self.end_token_id, *([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])}
        )
        config = hf_generation_config(
            max_new_tokens, do_sample, temperature, top_p, repetition_penalty, cache_implementation
        )
        config.update(eos_token_id=stop_ids, pad_token_id=self.formatter.pad_token_id)
        with torch.no_grad(), penalty_on_every_generated_token(repetition_penalty) as penalty:
            # Given only inputs_embeds, a decoder-only model returns just the new tokens.
            sequences = self.model.generate(
                inputs_embeds=embeds, attention_mask=mask, generation_config=config, **penalty
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
