"""The one vision-language model that SPEX, GeoMag and EarthGPT-X are recipes of.

Data flow (B batch, C bands, H×W pixels, N visual tokens, L text tokens, K prompt tokens)::

    image B×C×H×W ─ [cropper] ─ encoder ─> pyramid ─ fusion ─> map B×D×h×w ───────────────┐
                                                       └─> tokens B×N×D ─ projector ─>    │
    [visual prompts ─ prompt encoder ─> B×M×D_llm, spliced at <region>]                   │
    text ids B×L ─ LLM (visual tokens spliced at <image>) ─> hidden B×L'×D_llm            │
    hidden ─ positions (response tokens | [SEG]) ─ bridge ─> prompts B×K×D_dec            │
    [image ─ mask encoder ─> maps] or the fusion map ─────────── mask decoder <───────────┘ ─> B×1×H×W

SPEX is this model with MSAM, TCP over the response tokens and the SAM decoder on the fusion
map; its ``[SEG]`` variant swaps the bridge and the positions (recipes/ablations/spex/bridge-demo.yaml).
Everything SPEX-specific is an argument: the positions the bridge reads, the optional mask
encoder, named and weighted loss terms, metrics per task, generation settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from rsvlm.bridges.positions import BridgePositions, ResponseTokens, with_response_suffix
from rsvlm.contracts import Bridge, ContractError, Encoder, FusedFeatures, Fusion, MaskDecoder
from rsvlm.llm.generation import GenerationSettings
from rsvlm.models.base import ComposedModule, Link, OptimizerGroup, StagePhase
from rsvlm.models.output_checks import check_finite_masks
from rsvlm.models.targets import decoded_targets
from rsvlm.models.task_scoring import (
    MetricKind,
    build_task_metrics,
    log_task_metrics,
    routing_labels,
    scored_masks,
    update_routing_metric,
    update_task_metrics,
)
from rsvlm.models.vlm_stages import DEFAULT_OPTIMIZER_GROUPS, DEFAULT_STAGE_COMPONENTS
from rsvlm.training.losses import MASK_LOSSES, combine
from rsvlm.training.optim import OptimSettings


def read_image(module: nn.Module, image: torch.Tensor, batch: Mapping[str, Any] | None) -> Any:
    """``module(image)``, or ``module(image, batch)`` when it ``reads_batch`` (per-sample modality stems)."""
    return module(image, batch or {}) if getattr(module, "reads_batch", False) else module(image)


class VisionLanguageModel(ComposedModule):
    """Encoder → fusion → projector → LLM → bridge → mask decoder, with optional cropper,
    visual-prompt encoder and mask encoder.

    Args:
        encoder: image ``B×C×H×W`` → pyramid.
        fusion: pyramid → fused map + visual tokens (MSAM in SPEX).
        projector: visual tokens ``B×N×D`` → ``B×N×D_llm``.
        llm: a :class:`rsvlm.llm.causal_lm.CausalLM`.
        bridge: hidden states at ``positions`` → decoder prompts ``B×K×D_dec``.
        decoder: map + prompts → mask logits ``B×1×H×W``.
        positions: which hidden states the bridge reads (default: the response tokens, SPEX).
        mask_encoder: image → the map the decoder reads (e.g. a frozen SAM2 encoder); default:
            the fusion map. Given the batch when it ``reads_batch`` (a ``MultiSourceEncoder`` around a SAM ViT: per-sample stems).
        prompt_encoder: a :class:`~rsvlm.contracts.PromptEncoder` of the batch's visual prompts
            (``batch["visual_prompts"]``): tokens ``B×M×D_llm`` spliced at the LLM's placeholder
            named by its ``placeholder`` attribute (``tokens`` / ``inline`` modes), or one
            embedding per visual token (``dense``, with ``prompt_fusion``).
        prompt_fusion: (visual tokens ``B×N×D``, dense prompt embeddings ``B×N×D``) → ``B×N×D``
            before the projector (EarthGPT-X's hybrid fusion).
        cropper: ``(image B×C×H×W, batch) → image B×C×H×W`` of the same geometry (MagCrop), run
            before the encoder.
        stage, schedule, stage_components: which components train (see :class:`ComposedModule`);
            ``stage_components`` overrides entries of :data:`DEFAULT_STAGE_COMPONENTS`.
        optimizer_groups: group name → components, lr, weight decay (default: the SPEX paper's).
        optim: weight decay, betas and warm-up shared by the groups.
        loss_weights: loss term → weight; ``text`` is the LLM's cross-entropy, ``granularity`` a
            cropper's classifier (``classifier_loss``), the others name mask losses of
            :data:`rsvlm.training.losses.MASK_LOSSES` (paper 1/1/1, released 1/2/1).
        tasks: task names; batches say their task in ``batch["task"]`` (default: the first).
            The first task logs as ``val/F1``, others as ``val/<task>/F1``.
        task_metrics: task → ``binary`` (default), ``referring``, ``answer``, ``grounding`` or ``none``
            (:mod:`rsvlm.models.task_scoring`; each logs its trivial baselines beside it).
        metric_groups: per-sample field → values, declared up front (``{modality: [optical, sar]}``):
            a task's metric per value, ``<split>/<task>/<field>=<value>/*`` (:mod:`rsvlm.models.metric_groups`).
        metric_average: ``"global"`` (one confusion matrix over the split) or ``"image"`` (the
            mean of per-image scores, as the SPEX paper's tables); written into the run record
            and printed by ``rsvlm table``.
        generation: decoding settings for validation, test and predict.
        validate_with_generation: validate as the paper infers (generate → pool → decode), so
            ``val/*`` (and the checkpoint a ``val/F1`` monitor picks) never sees the reference
            response, which is written from the true mask; the teacher-forced scores log as
            ``val_teacher_forced/*``, an upper bound. ``False`` puts the teacher-forced scores
            in ``val/*`` (cheaper, but conditioned on the answer).
        test_with_generation: test as the paper (generate the response, read the positions
            among the generated tokens); ``False`` tests with the reference response.
        encoder_init: a checkpoint whose ``encoder.*`` weights start the encoder (MVPNet's);
            short for ``component_init: {encoder: ...}``.
        component_init: component → checkpoint whose ``<component>.*`` weights start it.
        init_from: a checkpoint of this model whose weights (only) start this run.
        log_images: validation overlays logged per epoch (0 turns it off).
        similarity_model: local sentence-transformers folder (all-MiniLM-L6-v2): ``answer`` tasks also log SS.
    """

    links = (
        Link("encoder", "channels", "fusion", "in_channels", what="channels"),
        Link("encoder", "reductions", "fusion", "in_reductions", what="reductions"),
        Link("fusion", "out_channels", "projector", "in_dim", what="width"),
        Link("projector", "out_dim", "llm", "hidden_size", what="width"),
        Link("prompt_encoder", "out_dim", "llm", "hidden_size", what="width", unless="prompt_fusion"),
        Link("prompt_encoder", "out_dim", "prompt_fusion", "dim", what="width"),
        Link("fusion", "out_channels", "prompt_fusion", "dim", what="width"),
        Link("llm", "hidden_size", "bridge", "in_dim"),
        Link("bridge", "out_dim", "decoder", "prompt_dim"),
        Link("fusion", "out_channels", "decoder", "in_channels", unless="mask_encoder"),
        Link("mask_encoder", "out_channels", "decoder", "in_channels"),
    )

    def __init__(
        self,
        encoder: Encoder,
        fusion: Fusion,
        projector: nn.Module,
        llm: nn.Module,
        bridge: Bridge,
        decoder: MaskDecoder,
        positions: BridgePositions = ResponseTokens(),
        mask_encoder: nn.Module | None = None,
        prompt_encoder: nn.Module | None = None,
        prompt_fusion: nn.Module | None = None,
        cropper: nn.Module | None = None,
        stage: str = "mask",
        schedule: list[StagePhase] | None = None,
        stage_components: dict[str, list[str]] | None = None,
        optimizer_groups: dict[str, OptimizerGroup] | None = None,
        optim: OptimSettings = OptimSettings(),
        loss_weights: dict[str, float] = {"text": 1.0, "bce": 1.0, "dice": 1.0},
        tasks: list[str] = ["land_cover"],
        task_metrics: dict[str, MetricKind] | None = None,
        metric_groups: dict[str, list[str] | None] | list[str] | None = None,
        metric_average: Literal["global", "image"] = "global",
        generation: GenerationSettings = GenerationSettings(),
        validate_with_generation: bool = True,
        test_with_generation: bool = True,
        encoder_init: str | None = None,
        component_init: dict[str, str] | None = None,
        init_from: str | None = None,
        log_images: int = 4,
        similarity_model: str | None = None,
    ) -> None:
        slots = (
            "encoder",
            "fusion",
            "projector",
            "llm",
            "bridge",
            "decoder",
            "mask_encoder",
            "prompt_encoder",
            "prompt_fusion",
            "cropper",
        )
        inits = {**(component_init or {}), **({"encoder": encoder_init} if encoder_init else {})}
        super().__init__(
            stages={**DEFAULT_STAGE_COMPONENTS, **(stage_components or {})},
            stage=stage,
            schedule=schedule,
            optimizer_groups=optimizer_groups if optimizer_groups is not None else DEFAULT_OPTIMIZER_GROUPS,
            optim=optim,
            init_from=init_from,
            component_init=inits,
        )
        self.save_hyperparameters(ignore=[*slots, "positions"])
        unknown = sorted(set(loss_weights) - {"text", "granularity", *MASK_LOSSES})
        if unknown:
            raise KeyError(
                f"loss_weights: unknown term(s) {unknown}; known: text, granularity, {', '.join(MASK_LOSSES)}"
            )
        if not tasks:
            raise ValueError("VisionLanguageModel: tasks must name at least one task")
        self.positions = positions
        self.loss_weights = dict(loss_weights)
        self.tasks = list(tasks)
        self.metric_average = metric_average
        self.generation = replace(generation)  # a copy: a default instance is shared between models
        self.validate_with_generation = validate_with_generation
        self.test_with_generation = test_with_generation
        self.log_images = log_images
        self.metrics = build_task_metrics(
            self.tasks, task_metrics, metric_average, routing_labels(cropper), metric_groups, similarity_model
        )
        given = (encoder, fusion, projector, llm, bridge, decoder, mask_encoder, prompt_encoder, prompt_fusion, cropper)
        self.assemble(dict(zip(slots, given, strict=True)))
        self._bind_cropper()
        # On the meta device (rsvlm summarize) an LLM may have no tokenizer: bind in setup then.
        if getattr(llm, "_tokenizer", None) is not None:
            positions.bind(llm)

    # ------------------------------------------------------------------ forward pieces
    def encode_image(self, image: torch.Tensor, batch: Mapping[str, Any] | None = None):
        """``B×C×H×W`` → (FusedFeatures, visual tokens ``B×N×D_llm``, decoder map ``B×D×h×w``)."""
        if image.shape[1] != self.encoder.in_bands:
            raise ContractError(
                f"batch field 'image' has {image.shape[1]} bands but {type(self.encoder).__name__} "
                f"expects in_bands={self.encoder.in_bands}"
            )
        if self.cropper is not None:
            image = self.cropper(image, batch)
        fused = self.fusion(read_image(self.encoder, image, batch))
        decoder_map = fused.map if self.mask_encoder is None else read_image(self.mask_encoder, image, batch)
        tokens = fused.tokens
        if self.prompt_fusion is not None:  # dense prompts: one per visual token, merged before the LLM
            prompts = self._visual_prompts(batch or {})
            dense = self.prompt_encoder(prompts, fused)
            tokens = self.prompt_fusion(tokens, dense, prompt_valid=prompts.valid.any(dim=1))
        return fused, self.projector(tokens), decoder_map

    def _visual_prompts(self, batch: Mapping[str, Any]):
        if batch.get("visual_prompts") is None:
            raise ContractError(
                f"{type(self.prompt_encoder).__name__} needs the batch field 'visual_prompts', which the data left out"
            )
        return batch["visual_prompts"]

    def placeholders(self, batch: Mapping[str, Any], fused: FusedFeatures | None = None) -> dict[str, Any]:
        """Embeddings spliced at placeholders other than ``<image>`` (the visual prompts)."""
        if self.prompt_encoder is None or self.prompt_encoder.mode == "dense":
            return {}
        return {self.prompt_encoder.placeholder: self.prompt_encoder(self._visual_prompts(batch), fused)}

    def decode_mask(
        self, decoder_map: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, size, batch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Read hidden states at ``positions`` (``B×L`` bool) into prompts; decode ``mask_logits``
        ``B×1×H×W`` (a decoder that reads visual prompts also gets the batch's ``visual_prompts``).

        With a bridge that reads several targets per sample (:mod:`rsvlm.models.targets`):
        ``target_logits`` ``T×1×H×W`` and ``target_index``, paired with ``batch["masks"]`` when the
        batch has them (``mask_logits`` then holds one row per reference target, ``target_masks``
        the references), else ``mask_logits`` is each sample's union of its targets.
        """
        if hasattr(self.bridge, "targets"):
            return decoded_targets(self.bridge, self.decoder, decoder_map, hidden, positions, size, batch)
        prompts = self.bridge(hidden, positions)
        extra: dict[str, Any] = {"batch": batch} if getattr(self.decoder, "reads_batch", False) else {}
        if getattr(self.decoder, "use_visual_prompts", False):
            extra["visual_prompts"] = batch.get("visual_prompts")
        return {"mask_logits": self.decoder(decoder_map, prompts, tuple(size), **extra)}

    def forward(self, batch: dict[str, Any], with_mask: bool = True) -> dict[str, torch.Tensor]:
        """Teacher-forced pass: text loss and (optionally) mask logits for a collated batch."""
        image = batch["image"]
        fused, visual, decoder_map = self.encode_image(image, batch)
        out = self.llm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_tokens=visual,
            labels=batch["labels"],
            response_mask=batch["response_mask"],
            **({"placeholders": extra} if (extra := self.placeholders(batch, fused)) else {}),
        )
        # the encoded image, so that scoring a batch both ways encodes it once (see _score_split)
        result = {"text_loss": out.loss, "visual_tokens": visual, "decoder_map": decoder_map, "fused": fused}
        if with_mask:
            positions = self.positions.teacher_forced(out)
            result.update(self.decode_mask(decoder_map, out.hidden_states, positions, image.shape[-2:], batch))
        return result

    def losses(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], with_mask: bool
    ) -> dict[str, torch.Tensor]:
        """The named loss terms that have a weight, and their weighted ``total``."""
        losses = {"text": outputs["text_loss"]} if "text" in self.loss_weights else {}
        if with_mask:
            for name in self.loss_weights:
                if name in MASK_LOSSES and len(outputs["mask_logits"]):  # none: a batch of text-only tasks
                    losses[name] = MASK_LOSSES[name](outputs["mask_logits"], *scored_masks(outputs, batch))
        routing = getattr(self.cropper, "classifier_loss", None)  # MagCrop's classifier, trained alongside
        if "granularity" in self.loss_weights and routing is not None and (term := routing(batch)) is not None:
            losses["granularity"] = term
        losses["total"] = combine(self.loss_weights, **losses)
        return losses

    @torch.no_grad()
    def predict_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Inference as in the paper: generate the response, read the positions among the
        generated tokens, decode the mask.

        Returns ``mask_logits`` ``B×1×H×W`` (NaN/inf: an error), the generated ``texts`` and their ``token_ids``.
        """
        fused, visual, decoder_map = self.encode_image(batch["image"], batch)
        return check_finite_masks(self._generate_masks(batch, visual, decoder_map, fused), batch)

    @torch.no_grad()
    def _generate_masks(
        self, batch: dict[str, Any], visual: torch.Tensor, decoder_map: torch.Tensor, fused: FusedFeatures
    ) -> dict[str, Any]:
        """:meth:`predict_masks` from an encoded image (visual tokens ``B×N×D_llm``, decoder map)."""
        image = batch["image"]
        extra = self.placeholders(batch, fused)
        seed = self.generation.sampling_seed()
        with torch.random.fork_rng(
            devices=[image.device] if image.device.type == "cuda" else [], enabled=seed is not None
        ):
            if seed is not None:
                torch.manual_seed(seed)
            gen = self.llm.generate(
                batch["prompt_ids"],
                batch["prompt_attention_mask"],
                visual,
                **self.generation.generate_kwargs(),
                **({"placeholders": extra} if extra else {}),
            )
        positions = self.positions.generated(gen)
        decoded = self.decode_mask(decoder_map, gen.hidden_states, positions, image.shape[-2:], batch)
        return {**decoded, "texts": gen.texts, "token_ids": gen.sequences}

    # ------------------------------------------------------------------ Lightning hooks
    def _bind_cropper(self) -> None:
        """A cropper that reads this model (MagCrop's attention pass) gets a weak reference to it."""
        if self.cropper is not None and hasattr(self.cropper, "bind"):
            self.cropper.bind(self)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._bind_cropper()  # again: a pickled or copied model's cropper comes back unbound
        if getattr(self.positions, "token_id", 0) is None:  # built without a tokenizer (meta device)
            self.positions.bind(self.llm)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "set_text_formatter"):
            datamodule.set_text_formatter(with_response_suffix(self.llm.formatter, self.positions.response_suffix))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        with_mask = self.current_stage != "text"
        losses = self.losses(self(batch, with_mask=with_mask), batch, with_mask)
        bs = batch["image"].shape[0]
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}_loss": v for k, v in losses.items() if k != "total"}, batch_size=bs)
        return losses["total"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """``val/*``: the configured protocol (generation by default); the loss and
        ``val_teacher_forced/*`` come from the reference response."""
        outputs = self(batch, with_mask=True)
        losses = self.losses(outputs, batch, with_mask=True)
        bs = batch["image"].shape[0]
        self.log("val_teacher_forced/loss", losses["total"], batch_size=bs, sync_dist=True)
        self._score_split("val", outputs, batch, self.validate_with_generation, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._log_metrics("val_teacher_forced")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score_split("test", self(batch, with_mask=True), batch, self.test_with_generation)

    def on_test_epoch_end(self) -> None:
        """``test/*``: the configured protocol; ``test_teacher_forced/*``: with the reference
        responses, logged too when the configured protocol generates them."""
        self._log_metrics("test")
        self._log_metrics("test_teacher_forced")

    def _score_split(
        self,
        split: str,
        outputs: dict[str, torch.Tensor],
        batch: dict[str, Any],
        with_generation: bool,
        batch_idx: int | None = None,
    ) -> None:
        """Update ``split`` with generated masks (and ``<split>_teacher_forced`` with the
        teacher-forced ones of ``outputs``, the batch's :meth:`forward`) or, without generation,
        ``split`` with the teacher-forced ones. Generation reuses the image ``outputs`` encoded."""
        scored = outputs
        if with_generation:
            encoded = (outputs["visual_tokens"], outputs["decoder_map"], outputs["fused"])
            scored = self._generate_masks(batch, *encoded)
            self._update_metrics(f"{split}_teacher_forced", outputs, batch)
        self._update_metrics(split, scored, batch)
        if split == "val" and batch_idx == 0 and self.log_images and "target_masks" not in scored:
            from rsvlm.training.image_logging import log_mask_overlays

            log_mask_overlays(self, batch, scored["mask_logits"], limit=self.log_images, tag="val/overlays")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if "prompt_ids" not in batch:
            raise ValueError(
                "this model answers an instruction per image and needs one: set data.init_args.categories, "
                "e.g. --data.init_args.categories='[water]'"
            )
        return {**self.predict_masks(batch), "meta": batch.get("meta")}

    # ------------------------------------------------------------------ metrics per task
    def _update_metrics(self, split: str, decoded: dict[str, Any], batch: dict[str, Any]) -> None:
        update_task_metrics(self.metrics[split], self.tasks, decoded, batch)
        update_routing_metric(self.metrics[split], self.cropper, batch)

    def _log_metrics(self, split: str) -> None:
        log_task_metrics(self, self.metrics[split], split, self.tasks)
