"""ComposedModule: a LightningModule assembled from named components.

What every rsvlm model shares, whatever its components are (the SPEX / GeoMag / EarthGPT-X
vision-language model, MVPNet, a task-granularity classifier):

* components declared by name (any set; a ``None`` slot is simply absent), in data-flow order;
* a stage schedule naming which components train in each stage (``stages``), switched per epoch;
  the trainable sets are printed at the start and at every switch;
* components that train nothing in the current stage run in eval mode (dropout off, BatchNorm
  statistics fixed), also after Lightning's ``model.train()``;
* ``init_from`` (the weights of a whole earlier run) and ``component_init`` (one component's
  weights from another run, e.g. the encoder from MVPNet);
* checkpoints that leave out only frozen weights a named source restores (a hub LLM base,
  recorded by identity) and keep everything else, random frozen weights included;
* optimiser groups declared in the recipe: group name → components, learning rate, weight decay;
* assembly checks driven by a declared list of neighbour links.

Subclasses call :meth:`assemble` with their components, then implement the steps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import lightning as L
from torch import nn

from rsvlm.contracts import check_link
from rsvlm.models.trainable import TrainableSets, format_parameter_table
from rsvlm.training.optim import OptimSettings, ParameterGroup, build_optimizer


@dataclass
class StagePhase:
    """Train ``stage`` for ``epochs`` epochs (a schedule is a list of these)."""

    stage: str
    epochs: int


@dataclass
class OptimizerGroup:
    """One AdamW parameter group: the parameters the named components declared trainable.

    Attributes:
        components: component names, e.g. ``[encoder, fusion, projector, bridge, decoder]``.
        lr: learning rate of the group.
        weight_decay: AdamW weight decay; None takes ``optim.weight_decay``.
    """

    components: list[str]
    lr: float
    weight_decay: float | None = None


@dataclass(frozen=True)
class Link:
    """``producer.produced`` must equal ``consumer.expected`` (checked at assembly).

    A link whose producer or consumer is absent, or lacks the attribute, is skipped: optional
    components and components that do not declare a width are not errors.
    """

    producer: str
    produced: str
    consumer: str
    expected: str
    #: The name the error uses for the value (default: ``expected``).
    what: str | None = None
    #: Skip this link when that component is present (e.g. the decoder reads a mask encoder's
    #: map instead of the fusion map).
    unless: str | None = None

    def check(self, components: Mapping[str, nn.Module]) -> None:
        producer, consumer = components.get(self.producer), components.get(self.consumer)
        if producer is None or consumer is None or (self.unless is not None and self.unless in components):
            return
        if not (hasattr(producer, self.produced) and hasattr(consumer, self.expected)):
            return
        produced, expected = getattr(producer, self.produced), getattr(consumer, self.expected)
        check_link(producer, produced, consumer, expected, self.what or self.expected)


class ComposedModule(L.LightningModule):
    """Base of rsvlm's models (see the module docstring).

    Args:
        stages: stage name → components trained in that stage.
        stage: the stage to train when ``schedule`` is not given.
        schedule: consecutive phases, e.g. ``[{stage: text, epochs: 2}, {stage: mask, epochs: 6}]``;
            past the last phase the last stage goes on.
        optimizer_groups: group name → :class:`OptimizerGroup`. A component that trains in this
            run but is in no group is an error (no learning rate is assumed for it).
        optim: betas, default weight decay and warm-up of the AdamW + cosine schedule.
        init_from: a checkpoint of this model (trained-only or full) whose weights start the run;
            unlike ``--ckpt_path`` it restores no optimiser, schedule or epoch.
        component_init: component name → a checkpoint whose ``<name>.*`` tensors initialise that
            component (e.g. ``{encoder: mvpnet.ckpt}``).
    """

    #: Neighbour links checked at assembly (subclasses declare theirs).
    links: tuple[Link, ...] = ()

    def __init__(
        self,
        stages: Mapping[str, Sequence[str]],
        stage: str,
        schedule: Sequence[StagePhase | Mapping[str, Any]] | None = None,
        optimizer_groups: Mapping[str, OptimizerGroup | Mapping[str, Any]] | None = None,
        optim: OptimSettings = OptimSettings(),
        init_from: str | None = None,
        component_init: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.stages = {name: list(parts) for name, parts in stages.items()}
        self.schedule = [StagePhase(**p) if isinstance(p, Mapping) else p for p in (schedule or [])]
        # Copies: assembly drops absent components from them, and defaults are shared.
        self.optimizer_groups = {
            name: OptimizerGroup(**(g if isinstance(g, Mapping) else asdict(g)))
            for name, g in (optimizer_groups or {}).items()
        }
        self.optim = replace(optim)  # a copy: a default instance is shared between models
        self._first_stage = self.schedule[0].stage if self.schedule else stage
        self._init_from = init_from
        self._component_init = dict(component_init or {})
        for phase in self.schedule:
            self._check_stage(phase.stage)
        self._check_stage(self._first_stage)

    # ------------------------------------------------------------------ assembly
    def assemble(self, components: Mapping[str, nn.Module | None]) -> None:
        """Register the components (``None`` slots are left out), check neighbour links, load
        initial weights and switch to the first stage."""
        self.component_names = [name for name, module in components.items() if module is not None]
        for name, module in components.items():
            setattr(self, name, module)  # an empty slot reads as None
        present = self.components()
        for link in self.links:
            link.check(present)
        # Stages and groups may name empty optional slots (dropped here), never unknown names.
        for where, names in [
            *((f"stage {s!r}", n) for s, n in self.stages.items()),
            *((f"optimizer group {g!r}", grp.components) for g, grp in self.optimizer_groups.items()),
        ]:
            unknown = sorted(set(names) - set(components))
            if unknown:
                raise KeyError(f"{where} names unknown component(s) {unknown}; known: {list(components)}")
        self.stages = {s: [n for n in names if n in present] for s, names in self.stages.items()}
        for group in self.optimizer_groups.values():
            group.components = [n for n in group.components if n in present]
        for name, path in self._component_init.items():
            self._init_component(name, path)
        self.trainable = TrainableSets(present)
        self.current_stage = self._first_stage
        self.trainable.activate(self.stages[self.current_stage])
        if self._init_from is not None:
            self.load_weights(self._init_from)

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise KeyError(f"unknown stage {stage!r}; known: {sorted(self.stages)}")

    def _init_component(self, name: str, path: str) -> None:
        from rsvlm.models.transfer import load_encoder_weights

        if name not in self.component_names:
            raise KeyError(f"component_init names {name!r}, which this model does not have ({self.component_names})")
        load_encoder_weights(getattr(self, name), path, prefix=f"{name}.")

    def components(self) -> dict[str, nn.Module]:
        """Components in data-flow order."""
        return {name: getattr(self, name) for name in self.component_names}

    def load_weights(self, path: str | dict[str, Any]) -> None:
        """Load the model weights of a checkpoint of this model (trained-only or full), nothing else.

        ``path``: the file, or a checkpoint already read (its ``state_dict`` gets the frozen
        weights filled in)."""
        from rsvlm.training.checkpoints import load_checkpoint
        from rsvlm.training.trained_only import restore_frozen

        checkpoint = load_checkpoint(path) if isinstance(path, (str, os.PathLike)) else path
        restore_frozen(self, checkpoint)
        self.load_state_dict(checkpoint["state_dict"], strict=True)

    # ------------------------------------------------------------------ stages
    def stage_at_epoch(self, epoch: int) -> str:
        """The stage the schedule prescribes for ``epoch`` (0-based)."""
        if not self.schedule:
            return self._first_stage
        start = 0
        for phase in self.schedule:
            if epoch < start + phase.epochs:
                return phase.stage
            start += phase.epochs
        return self.schedule[-1].stage

    def set_stage(self, stage: str) -> None:
        """Switch which components train; parameters of the others get ``requires_grad=False``
        and the others run in eval mode."""
        self._check_stage(stage)
        self.current_stage = stage
        self.trainable.activate(self.stages[stage])
        self.train(self.training)

    def frozen_components(self) -> list[str]:
        """Components with no trainable parameter now (they run in eval mode)."""
        return [
            name for name, module in self.components().items() if not any(p.requires_grad for p in module.parameters())
        ]

    def train(self, mode: bool = True) -> ComposedModule:
        """``nn.Module.train``, but components that train nothing now stay in eval mode."""
        super().train(mode)
        if mode and hasattr(self, "trainable"):
            for name in self.frozen_components():
                getattr(self, name).eval()
        return self

    def components_of_run(self) -> set[str]:
        """Components that some stage of this run (the schedule, or the single stage) trains."""
        stages = {p.stage for p in self.schedule} or {self.current_stage}
        return set().union(*(self.stages[s] for s in stages))

    def parameter_table(self) -> str:
        return format_parameter_table(self.trainable.rows(), title=f"stage: {self.current_stage}")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if stage == "fit":
            # DDP registers only parameters that need gradients when it wraps the model, which
            # happens after setup: open every component some phase trains, so that a later
            # stage's parameters stay synchronised across ranks.
            self.trainable.activate(self.components_of_run())

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A frozen multi-billion-parameter LLM is not copied into every checkpoint.
        from rsvlm.training.trained_only import keep_trained_only

        keep_trained_only(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from rsvlm.training.trained_only import restore_frozen

        restore_frozen(self, checkpoint)

    def configure_optimizers(self):
        """AdamW over the declared groups; only components that some stage of this run trains
        get optimiser state (parameters frozen by the current stage have no gradient and AdamW
        skips them, so one optimiser serves the whole schedule)."""
        used = self.components_of_run()
        grouped = {n for g in self.optimizer_groups.values() for n in g.components}
        orphans = sorted(n for n in used if n not in grouped and self.trainable.declared[n])
        if orphans:
            raise KeyError(
                f"component(s) {orphans} train in this run but are in no optimizer group "
                f"({ {k: g.components for k, g in self.optimizer_groups.items()} }); add them to a group"
            )
        groups = [
            ParameterGroup(
                name=name,
                params=self.trainable.declared_parameters([n for n in group.components if n in used]),
                lr=group.lr,
                weight_decay=group.weight_decay,
            )
            for name, group in self.optimizer_groups.items()
        ]
        trainer = self.trainer
        scaled = str(trainer.precision) in ("16-mixed", "16") and bool(trainer.gradient_clip_val)
        return build_optimizer(groups, self.optim, trainer.estimated_stepping_batches, clips_scaled_gradients=scaled)
