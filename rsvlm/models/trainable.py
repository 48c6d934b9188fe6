"""Trainable sets declared per component, switched per training stage, printed as a table.

A component decides at construction which of its own parameters can train (a frozen encoder,
LoRA adapters on a frozen LLM, a frozen SAM prompt encoder). A model then decides, per stage,
which components train at all. Nothing here chooses parameters by substrings of their names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class ComponentRow:
    """One line of the parameter table."""

    name: str
    kind: str
    total: int
    trainable: int
    #: A component's own name for how it trains (e.g. "LoRA r=8"), used when it trains at all.
    label: str | None = None

    @property
    def mode(self) -> str:
        if self.trainable == 0:
            return "frozen"
        if self.label:
            return self.label
        if self.trainable == self.total:
            return "trained"
        return "partial"


class TrainableSets:
    """Remembers each component's own trainable parameters and switches whole components on/off.

    Args:
        components: name → module, in the order of the data flow.
    """

    def __init__(self, components: dict[str, nn.Module]) -> None:
        self.components = components
        # Captured once: what each component itself declared trainable at construction.
        self.declared: dict[str, set[str]] = {
            name: {pname for pname, p in module.named_parameters() if p.requires_grad}
            for name, module in components.items()
        }

    def activate(self, active: list[str] | set[str]) -> None:
        """Let the components in ``active`` train what they declared; freeze all others."""
        unknown = set(active) - set(self.components)
        if unknown:
            raise KeyError(f"unknown component(s) {sorted(unknown)}; known: {list(self.components)}")
        for name, module in self.components.items():
            on = name in active
            for pname, p in module.named_parameters():
                p.requires_grad_(on and pname in self.declared[name])

    def declared_parameters(self, names: list[str]) -> list[nn.Parameter]:
        """Parameters that the named components declared trainable (whatever the current stage)."""
        return [
            p for name in names for pname, p in self.components[name].named_parameters() if pname in self.declared[name]
        ]

    def rows(self) -> list[ComponentRow]:
        return [
            ComponentRow(
                name=name,
                kind=type(module).__name__,
                total=sum(p.numel() for p in module.parameters()),
                trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
                label=getattr(module, "trainable_mode", None),
            )
            for name, module in self.components.items()
        ]


def format_parameter_table(rows: list[ComponentRow], title: str = "") -> str:
    """Markdown table of total / trainable parameters per component, with a total line."""
    lines = [title] if title else []
    lines += ["| component | class | parameters | trainable | mode |", "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.kind} | {human_count(r.total)} | {human_count(r.trainable)} | {r.mode} |")
    total = sum(r.total for r in rows)
    trainable = sum(r.trainable for r in rows)
    lines.append(f"| **total** | | {human_count(total)} | {human_count(trainable)} | |")
    return "\n".join(lines)


def human_count(n: int) -> str:
    """1536 → '1.54 K', 1_543_714_304 → '1.544 B' (exact count kept when below 1000)."""
    for unit, scale, digits in (("B", 1e9, 3), ("M", 1e6, 2), ("K", 1e3, 2)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return str(n)
