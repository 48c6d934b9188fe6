"""Scores per group of samples: one copy of a task's metric per value of a per-sample field.

``metric_groups`` names per-sample batch fields and, for each, the values scored apart::

    metric_groups: {modality: [optical, sar, infrared], prompt_kind: [point, box, scribble], source: [dior_rsvg]}

* ``modality``: ``batch["modality"]`` (ids of :data:`rsvlm.data.modalities.MODALITY_IDS`), by name;
* ``prompt_kind``: the :data:`rsvlm.contracts.PROMPT_KINDS` name of the kind of each sample's slot 0
  of ``batch["visual_prompts"]`` (``empty`` without a prompt);
* any other field (``source``, ``granularity``, ...): ``batch[field]``, a list of B values, as text.

The values are declared up front, so that every process holds the same metric states (torchmetrics
reduces states over processes by name: a group one process met and another did not would not
reduce). ``modality`` and ``prompt_kind`` may leave them out (``null``, or a list of field names):
every modality, every prompt kind but ``empty``. A sample whose value is not declared is scored in
the task's overall metric only. Each group logs as ``<split>/<task>/<field>=<value>/<name>``
(:func:`rsvlm.models.task_scoring.log_task_metrics`), the first task included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rsvlm.contracts import PROMPT_KINDS
from rsvlm.data.modalities import MODALITY_IDS

#: The values of a field whose list may be left out.
DEFAULT_VALUES: dict[str, tuple[str, ...]] = {
    "modality": tuple(MODALITY_IDS),
    "prompt_kind": tuple(k for k in PROMPT_KINDS if k != "empty"),
}
#: The values a field may take, where they are known.
KNOWN_VALUES: dict[str, tuple[str, ...]] = {"modality": tuple(MODALITY_IDS), "prompt_kind": tuple(PROMPT_KINDS)}
MetricGroups = Mapping[str, Sequence[str] | None] | Sequence[str]


def check_groups(groups: MetricGroups | None) -> dict[str, list[str]]:
    """``field → values`` of ``metric_groups`` (see the module docstring), defaults filled in and checked."""
    if not groups:
        return {}
    spec = {field: None for field in groups} if not isinstance(groups, Mapping) else dict(groups)
    out: dict[str, list[str]] = {}
    for field, values in spec.items():
        if values is None:
            if field not in DEFAULT_VALUES:
                raise ValueError(
                    f"metric_groups: list the values of {field!r} (only {', '.join(DEFAULT_VALUES)} have defaults)"
                )
            values = DEFAULT_VALUES[field]
        if isinstance(values, str) or not values:
            raise ValueError(f"metric_groups: {field!r} needs a non-empty list of values, got {values!r}")
        values = list(dict.fromkeys(str(v) for v in values))
        unknown = [v for v in values if field in KNOWN_VALUES and v not in KNOWN_VALUES[field]]
        if unknown:
            raise ValueError(
                f"metric_groups: {field} has no value(s) {unknown}; known: {', '.join(KNOWN_VALUES[field])}"
            )
        out[str(field)] = values
    return out


def sample_values(batch: Mapping[str, Any], field: str, size: int) -> list[str]:
    """Each of the ``size`` samples' value of ``field`` (see the module docstring), as text."""
    if field == "prompt_kind":
        prompts = batch.get("visual_prompts")
        if prompts is None or prompts.slots == 0:
            return ["empty"] * size
        names = {i: name for name, i in PROMPT_KINDS.items()}
        return [names[int(k)] for k in prompts.kind[:, 0].tolist()]
    values = batch.get(field)
    if values is None:
        raise KeyError(f"metric_groups groups by {field!r}, a field the batch does not have")
    if isinstance(values, torch.Tensor):
        values = values.reshape(-1).tolist()
    if field == "modality":
        names = {i: name for name, i in MODALITY_IDS.items()}
        return [v if isinstance(v, str) else names[int(v)] for v in values]
    return [str(v) for v in values]


class GroupedMetrics(nn.ModuleDict):
    """``task × field × value`` → a fresh copy of the task's metric.

    Keys are ``"0"``, ``"1"``, ... (a value may hold a ``.``, which a module name may not);
    :attr:`labels` holds each key's ``(task, field, value)``.

    Args:
        groups: ``field → values``, as :func:`check_groups` returns.
        tasks: the tasks scored per group.
        make: task → a new metric of that task.
    """

    def __init__(self, groups: Mapping[str, Sequence[str]], tasks: Sequence[str], make: Callable[[str], nn.Module]):
        labels = [(t, f, v) for t in tasks for f, values in groups.items() for v in values]
        super().__init__({str(i): make(task) for i, (task, _, _) in enumerate(labels)})
        self.groups = {f: list(v) for f, v in groups.items()}
        self.labels = labels

    def score_batch(
        self, score: Callable[[nn.Module, list[bool]], None], sample_tasks: Sequence[str], batch: Mapping[str, Any]
    ) -> None:
        """``score(metric, picked)`` for each group that holds some of the batch's samples (``picked``: B bools)."""
        present = set(sample_tasks)
        values = {f: sample_values(batch, f, len(sample_tasks)) for f in self.groups}
        for key, (task, field, value) in zip(self.keys(), self.labels):
            if task not in present:
                continue
            picked = [t == task and v == value for t, v in zip(sample_tasks, values[field], strict=True)]
            if any(picked):
                score(self[key], picked)

    def named_groups(self) -> list[tuple[str, nn.Module]]:
        """``(<task>/<field>=<value>, metric)`` per group."""
        return [(f"{t}/{f}={v}", self[k]) for k, (t, f, v) in zip(self.keys(), self.labels)]
