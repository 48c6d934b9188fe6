"""A compact table of the per-group scores a model logs with ``metric_groups``, each beside its baseline.

A :class:`~rsvlm.models.vlm.VisionLanguageModel` with ``metric_groups`` logs every scored task once per
declared value of a per-sample field (:mod:`rsvlm.models.metric_groups`), as
``<split>/<task>/<field>=<value>/<name>``, next to the task's overall scores (``<split>/<task>/<name>``;
the model's first task as ``<split>/<name>``). Lightning's own summary cuts those long names short;
:func:`format_group_table` prints them as one row per group (``all`` first, then ``modality=sar``,
``prompt_kind=box``, ...) and one column per task: its headline score and, after a slash, the trivial
baseline scored on the same samples (:data:`HEADLINES`)::

    test scores per group: model / baseline
    group               gcg mIoU / prompt box   grounding Acc@0.5 / centre box   referring_classification ...
    all                 0.712 / 0.321           0.240 / 0.000                    0.910 / 0.270
    modality=optical    0.730 / 0.318           0.260 / 0.000                    0.930 / 0.267
    prompt_kind=point   0.650 / 0.026           —                                0.880 / 0.275

A group a task was not scored in (grounding has no visual prompt, so no ``prompt_kind``) shows ``—``.
``rsvlm fit`` prints the test table after its test (:mod:`rsvlm.cli.lightning`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: Headline score → (its baseline's metric name, the baseline's label), in the order they are looked for:
#: a task's column shows the first headline its scores have (:mod:`rsvlm.models.task_scoring`).
HEADLINES: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy_majority", "majority"),
    "Acc@0.5": ("Acc@0.5_centre_box", "centre box"),
    "mIoU": ("mIoU_prompt_box", "prompt box"),
}
OVERALL = "all"
MISSING = "—"
GAP = "   "


def split_scores(metrics: Mapping[str, float], split: str, first_task: str | None) -> dict[str, dict[str, dict]]:
    """``task → group → {name: value}`` of ``split``'s scores (group :data:`OVERALL` for the task's overall
    ones). Keys ``<split>/<name>`` belong to ``first_task`` (left out when it is None)."""
    out: dict[str, dict[str, dict]] = {}
    prefix = f"{split}/"
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split("/")
        if len(parts) == 1:
            if first_task is None:
                continue
            task, group, name = first_task, OVERALL, parts[0]
        elif len(parts) == 2:
            task, group, name = parts[0], OVERALL, parts[1]
        elif len(parts) == 3 and "=" in parts[1]:
            task, group, name = parts
        else:
            continue
        out.setdefault(task, {}).setdefault(group, {})[name] = float(value)
    return out


def headline(groups: Mapping[str, Mapping[str, float]]) -> str | None:
    """The first name of :data:`HEADLINES` that a task's scores have, or None."""
    names = {name for scores in groups.values() for name in scores}
    return next((name for name in HEADLINES if name in names), None)


def cell(scores: Mapping[str, float] | None, name: str) -> str:
    """``"model / baseline"`` (3 decimals) of one task in one group; :data:`MISSING` when it has no such score."""
    if not scores or name not in scores:
        return MISSING
    baseline = scores.get(HEADLINES[name][0])
    return f"{scores[name]:.3f}" + (f" / {baseline:.3f}" if baseline is not None else "")


def group_order(tasks: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """:data:`OVERALL` first, then the groups in the order they were first logged."""
    groups = [g for scores in tasks.values() for g in scores if g != OVERALL]
    return [OVERALL, *dict.fromkeys(groups)]


def format_group_table(
    metrics: Mapping[str, float], split: str = "test", first_task: str | None = None, tasks: Sequence[str] = ()
) -> str:
    """The table of ``split``'s per-group scores (module docstring); ``""`` when ``metrics`` has no groups.

    Args:
        metrics: logged scores, e.g. a run's ``metrics.json`` or ``trainer.test``'s result.
        split: ``test``, ``val``, ``test_teacher_forced``, ...
        first_task: the model's first task, whose overall scores are logged without the task's name.
        tasks: the column order (default: the order of ``metrics``); tasks without groups or without a
            headline score are left out.
    """
    scores = split_scores(metrics, split, first_task)
    if not any(g != OVERALL for groups in scores.values() for g in groups):
        return ""
    order = [t for t in tasks if t in scores] + [t for t in scores if t not in tasks]
    grouped = [t for t in order if any(g != OVERALL for g in scores[t])]  # not e.g. a routing classifier's
    columns = [(t, name) for t in grouped if (name := headline(scores[t])) is not None]
    header = ["group"] + [f"{t} {name} / {HEADLINES[name][1]}" for t, name in columns]
    rows = [[g] + [cell(scores[t].get(g), name) for t, name in columns] for g in group_order(scores)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [GAP.join(text.ljust(width) for text, width in zip(r, widths, strict=True)).rstrip() for r in rows]
    title = f"{split} scores per group: model / baseline"
    return "\n".join([title, GAP.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), *lines])
