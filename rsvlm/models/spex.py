"""SPEX: land-cover extraction from spectral imagery with an LLM in the loop.

Data flow (B batch, C bands, H×W pixels, N visual tokens, L text tokens, K prompt tokens)::

    image B×C×H×W ─ encoder ─> pyramid ─ fusion (MSAM) ─> map B×D×h×w ──────────────┐
                                                     └─> tokens B×N×D ─ projector ─> │
    instruction + response ids B×L ─ LLM (visual tokens spliced at <image>) ─> hidden B×L'×D_llm
    hidden (response positions) ─ bridge (TCP) ─> prompts B×K×D_dec ─ mask decoder ─> B×1×H×W

The module is built only from the components given to its constructor; it owns the training
stages (which components train), the losses, the optimiser and the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from rsvlm.contracts import Bridge, ContractError, Encoder, Fusion, MaskDecoder, check_link
from rsvlm.models.trainable import TrainableSets, format_parameter_table
from rsvlm.training.losses import LossWeights, bce_loss, combine, dice_loss
from rsvlm.training.metrics import BinarySegmentationMetrics
from rsvlm.training.optim import OptimSettings, build_optimizer

Stage = Literal["text", "mask", "joint"]

#: Which components each stage trains (the SPEX paper's two stages, plus both at once).
DEFAULT_STAGE_COMPONENTS: dict[str, list[str]] = {
    "text": ["encoder", "fusion", "projector", "llm"],
    "mask": ["encoder", "fusion", "bridge", "decoder"],
    "joint": ["encoder", "fusion", "projector", "llm", "bridge", "decoder"],
}


@dataclass
class GenerationSettings:
    """How descriptions are generated at test / predict time."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.0


@dataclass
class StagePhase:
    """Train ``stage`` for ``epochs`` epochs (a schedule is a list of these)."""

    stage: Stage
    epochs: int


class SpexModel(L.LightningModule):
    """The SPEX system: encoder → fusion → projector → LLM → bridge → mask decoder.

    Args:
        encoder: image ``B×C×H×W`` → pyramid.
        fusion: pyramid → fused map + visual tokens (MSAM in the paper).
        projector: visual tokens ``B×N×D`` → ``B×N×D_llm``.
        llm: a :class:`rsvlm.llm.causal_lm.CausalLM`.
        bridge: LLM hidden states at response positions → decoder prompts (TCP in the paper).
        decoder: fused map + prompts → mask logits.
        stage: which stage to train when ``schedule`` is not given.
        schedule: consecutive phases, e.g. ``[{stage: text, epochs: 2}, {stage: mask, epochs: 6}]``;
            past the last phase the last stage goes on.
        stage_components: override which components each stage trains.
        loss_weights: text / BCE / Dice weights (paper 1/1/1, released code 1/2/1).
        optim: learning rates, weight decay and warm-up.
        generation: decoding settings for test and predict.
        test_with_generation: test as in the paper (generate the description, pool the generated
            tokens); ``False`` tests with the reference response (teacher forcing), like validation.
        encoder_init: a checkpoint whose encoder weights initialise ``encoder`` (e.g. MVPNet's).
        init_from: a SPEX checkpoint whose model weights (only) start this run, e.g. stage 2
            from stage 1; unlike ``--ckpt_path`` it restores no optimiser, schedule or epoch.
        log_images: how many validation overlays to log per epoch (0 turns it off).
    """

    def __init__(
        self,
        encoder: Encoder,
        fusion: Fusion,
        projector: nn.Module,
        llm: nn.Module,
        bridge: Bridge,
        decoder: MaskDecoder,
        stage: Stage = "mask",
        schedule: list[StagePhase] | None = None,
        stage_components: dict[str, list[str]] | None = None,
        loss_weights: LossWeights = LossWeights(),
        optim: OptimSettings = OptimSettings(),
        generation: GenerationSettings = GenerationSettings(),
        test_with_generation: bool = True,
        encoder_init: str | None = None,
        init_from: str | None = None,
        log_images: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "fusion", "projector", "llm", "bridge", "decoder"])
        self.encoder = encoder
        self.fusion = fusion
        self.projector = projector
        self.llm = llm
        self.bridge = bridge
        self.decoder = decoder
        check_assembly(encoder, fusion, projector, llm, bridge, decoder)
        if encoder_init is not None:
            from rsvlm.models.transfer import load_encoder_weights

            load_encoder_weights(self.encoder, encoder_init)

        self.stage_components = {**DEFAULT_STAGE_COMPONENTS, **(stage_components or {})}
        self.schedule = [StagePhase(**p) if isinstance(p, dict) else p for p in (schedule or [])]
        self.loss_weights = loss_weights
        self.optim = optim
        self.generation = generation
        self.test_with_generation = test_with_generation
        self.log_images = log_images
        self.trainable = TrainableSets(self.components())
        self.current_stage: str = self.schedule[0].stage if self.schedule else stage
        self.trainable.activate(self.stage_components[self.current_stage])
        self.val_metrics = BinarySegmentationMetrics()
        self.test_metrics = BinarySegmentationMetrics()
        # With generation, test also scores the reference descriptions, to show the gap.
        self.test_metrics_teacher_forced = BinarySegmentationMetrics()
        if init_from is not None:
            self.load_weights(init_from)

    def load_weights(self, path: str) -> None:
        """Load the model weights of a SPEX checkpoint (trained-only or full), nothing else."""
        from rsvlm.training.checkpoints import load_checkpoint, restore_frozen

        checkpoint = load_checkpoint(path)
        restore_frozen(self, checkpoint)
        self.load_state_dict(checkpoint["state_dict"], strict=True)

    # ------------------------------------------------------------------ structure
    def components(self) -> dict[str, nn.Module]:
        """Components in data-flow order."""
        return {
            "encoder": self.encoder,
            "fusion": self.fusion,
            "projector": self.projector,
            "llm": self.llm,
            "bridge": self.bridge,
            "decoder": self.decoder,
        }

    def stage_at_epoch(self, epoch: int) -> str:
        """The stage the schedule prescribes for ``epoch`` (0-based)."""
        if not self.schedule:
            return self.hparams.stage
        start = 0
        for phase in self.schedule:
            if epoch < start + phase.epochs:
                return phase.stage
            start += phase.epochs
        return self.schedule[-1].stage

    def set_stage(self, stage: str) -> None:
        """Switch which components train; parameters of the others get ``requires_grad=False``."""
        if stage not in self.stage_components:
            raise KeyError(f"unknown stage {stage!r}; known: {sorted(self.stage_components)}")
        self.current_stage = stage
        self.trainable.activate(self.stage_components[stage])

    def parameter_table(self) -> str:
        return format_parameter_table(self.trainable.rows(), title=f"stage: {self.current_stage}")

    # ------------------------------------------------------------------ forward pieces
    def encode_image(self, image: torch.Tensor):
        """``B×C×H×W`` → (FusedFeatures, visual tokens ``B×N×D_llm``)."""
        if image.shape[1] != self.encoder.in_bands:
            raise ContractError(
                f"batch field 'image' has {image.shape[1]} bands but {type(self.encoder).__name__} "
                f"expects in_bands={self.encoder.in_bands}"
            )
        fused = self.fusion(self.encoder(image))
        return fused, self.projector(fused.tokens)

    def decode_mask(self, fused_map: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, size) -> torch.Tensor:
        """Pool hidden states at ``positions`` (``B×L`` bool) into prompts and decode ``B×1×H×W`` logits."""
        prompts = self.bridge(hidden, positions)
        return self.decoder(fused_map, prompts, tuple(size))

    def forward(self, batch: dict[str, Any], with_mask: bool = True) -> dict[str, torch.Tensor]:
        """Teacher-forced pass: text loss and (optionally) mask logits for a collated batch."""
        image = batch["image"]
        fused, visual = self.encode_image(image)
        out = self.llm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_tokens=visual,
            labels=batch["labels"],
            response_mask=batch["response_mask"],
        )
        result = {"text_loss": out.loss}
        if with_mask:
            result["mask_logits"] = self.decode_mask(fused.map, out.hidden_states, out.response_mask, image.shape[-2:])
        return result

    def losses(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], with_mask: bool
    ) -> dict[str, torch.Tensor]:
        losses = {"text": outputs["text_loss"]}
        if with_mask:
            valid = batch.get("valid")
            losses["bce"] = bce_loss(outputs["mask_logits"], batch["mask"], valid)
            losses["dice"] = dice_loss(outputs["mask_logits"], batch["mask"], valid)
        losses["total"] = combine(self.loss_weights, **losses)
        return losses

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if stage == "fit":
            # DDP registers only parameters that need gradients when it wraps the model, which
            # happens after setup: open every component some phase trains, so that a later
            # stage's parameters stay synchronised across ranks.
            self.trainable.activate(self._components_of_run())
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "set_text_formatter"):
            datamodule.set_text_formatter(self.llm.formatter)

    def on_fit_start(self) -> None:
        # Runs after the strategy wrapped the model (see setup): now freeze for this epoch.
        self.set_stage(self.stage_at_epoch(self.current_epoch))
        if self.trainer.is_global_zero:
            print(self.parameter_table())

    def on_train_epoch_start(self) -> None:
        stage = self.stage_at_epoch(self.current_epoch)
        if stage != self.current_stage:
            self.set_stage(stage)
            if self.trainer.is_global_zero:
                print(f"\nepoch {self.current_epoch}: switching to stage '{stage}'\n{self.parameter_table()}")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        with_mask = self.current_stage != "text"
        losses = self.losses(self(batch, with_mask=with_mask), batch, with_mask)
        bs = batch["image"].shape[0]
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}_loss": v for k, v in losses.items() if k != "total"}, batch_size=bs)
        return losses["total"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self(batch, with_mask=True)
        losses = self.losses(outputs, batch, with_mask=True)
        bs = batch["image"].shape[0]
        self.log("val/loss", losses["total"], prog_bar=True, batch_size=bs, sync_dist=True)
        self.val_metrics.update(outputs["mask_logits"], batch["mask"], batch.get("valid"))
        if batch_idx == 0 and self.log_images:
            self._log_overlays(batch, outputs["mask_logits"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()}, prog_bar=False)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        teacher_forced = self(batch, with_mask=True)["mask_logits"]
        if self.test_with_generation:
            self.test_metrics.update(self.predict_masks(batch)["mask_logits"], batch["mask"], batch.get("valid"))
            self.test_metrics_teacher_forced.update(teacher_forced, batch["mask"], batch.get("valid"))
        else:
            self.test_metrics.update(teacher_forced, batch["mask"], batch.get("valid"))

    def on_test_epoch_end(self) -> None:
        """``test/*``: the configured protocol; ``test_teacher_forced/*``: with the reference
        descriptions, logged too when the configured protocol generates them."""
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()
        if self.test_with_generation:
            scores = self.test_metrics_teacher_forced.compute()
            self.log_dict({f"test_teacher_forced/{k}": v for k, v in scores.items()})
            self.test_metrics_teacher_forced.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if "prompt_ids" not in batch:
            raise ValueError(
                "SPEX extracts one land-cover category at a time and needs an instruction: set "
                "data.init_args.categories, e.g. --data.init_args.categories='[water]'"
            )
        return {**self.predict_masks(batch), "meta": batch.get("meta")}

    @torch.no_grad()
    def predict_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Inference as in the paper: generate the description, pool its tokens, decode the mask.

        Returns ``mask_logits`` ``B×1×H×W``, the generated ``texts`` and their ``token_ids``.
        """
        image = batch["image"]
        fused, visual = self.encode_image(image)
        g = self.generation
        gen = self.llm.generate(
            batch["prompt_ids"],
            batch["prompt_attention_mask"],
            visual,
            max_new_tokens=g.max_new_tokens,
            do_sample=g.do_sample,
            temperature=g.temperature,
            top_p=g.top_p,
            repetition_penalty=g.repetition_penalty,
        )
        positions = generated_positions(gen.response_mask, gen.mask)
        logits = self.decode_mask(fused.map, gen.hidden_states, positions, image.shape[-2:])
        return {"mask_logits": logits, "texts": gen.texts, "token_ids": gen.sequences}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A frozen multi-billion-parameter LLM is not copied into every checkpoint.
        from rsvlm.training.checkpoints import keep_trained_only

        keep_trained_only(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from rsvlm.training.checkpoints import restore_frozen

        restore_frozen(self, checkpoint)

    def _components_of_run(self) -> set[str]:
        """Components that some stage of this run (the schedule, or the single stage) trains."""
        stages = {p.stage for p in self.schedule} or {self.current_stage}
        return set().union(*(self.stage_components[s] for s in stages))

    def configure_optimizers(self):
        # Only components that some stage of this run trains get optimiser state.
        used = self._components_of_run()
        vision = [n for n in ("encoder", "fusion", "projector", "bridge", "decoder") if n in used]
        groups = {
            "vision": self.trainable.declared_parameters(vision),
            "llm": self.trainable.declared_parameters(["llm"] if "llm" in used else []),
        }
        return build_optimizer(groups, self.optim, self.trainer.estimated_stepping_batches)

    # ------------------------------------------------------------------ pictures
    def _log_overlays(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        from rsvlm.training.image_logging import log_mask_overlays

        log_mask_overlays(self, batch, logits, limit=self.log_images, tag="val/overlays")


def generated_positions(response_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positions to pool among generated tokens: ``B×T`` bool.

    The generated tokens before the closing token (``response_mask``), matching training, where
    the bridge pools the response tokens without it. A sample that produced only the closing
    token falls back to that token (``mask``), so that the bridge always has something to pool.
    """
    positions = response_mask.clone()
    empty = ~positions.any(dim=1)
    positions[empty] = mask[empty]
    return positions


def check_assembly(encoder, fusion, projector, llm, bridge, decoder) -> None:
    """Check neighbouring components agree on widths; the error names both components."""
    check_link(encoder, encoder.channels, fusion, fusion.in_channels, "channels")
    if hasattr(fusion, "in_reductions"):
        check_link(encoder, encoder.reductions, fusion, fusion.in_reductions, "reductions")
    if hasattr(projector, "in_dim"):
        check_link(fusion, fusion.out_channels, projector, projector.in_dim, "width")
    if hasattr(projector, "out_dim"):
        check_link(projector, projector.out_dim, llm, llm.hidden_size, "width")
    check_link(llm, llm.hidden_size, bridge, bridge.in_dim, "in_dim")
    check_link(bridge, bridge.out_dim, decoder, decoder.prompt_dim, "prompt_dim")
    check_link(fusion, fusion.out_channels, decoder, decoder.in_channels, "in_channels")
