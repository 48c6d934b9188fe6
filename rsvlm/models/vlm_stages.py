"""The vision-language model's default stages and optimiser groups (the SPEX paper's)."""

from __future__ import annotations

from rsvlm.models.base import OptimizerGroup

#: Every component slot, in the order the data flows through them.
SLOTS_IN_FLOW_ORDER: tuple[str, ...] = (
    "cropper",
    "encoder",
    "fusion",
    "prompt_encoder",
    "prompt_fusion",
    "projector",
    "llm",
    "bridge",
    "mask_encoder",
    "decoder",
)
_TEXT_SIDE = {"cropper", "encoder", "fusion", "prompt_encoder", "prompt_fusion", "projector", "llm"}
_MASK_SIDE = {"cropper", "encoder", "fusion", "prompt_encoder", "bridge", "mask_encoder", "decoder"}

#: Which components each stage trains (the SPEX paper's two stages, plus both at once). Empty
#: optional slots are dropped from a stage.
DEFAULT_STAGE_COMPONENTS: dict[str, list[str]] = {
    "text": [s for s in SLOTS_IN_FLOW_ORDER if s in _TEXT_SIDE],
    "mask": [s for s in SLOTS_IN_FLOW_ORDER if s in _MASK_SIDE],
    "joint": list(SLOTS_IN_FLOW_ORDER),
}

#: The SPEX paper's optimiser groups: the vision side at 1e-4, the LLM's adapters at 1e-5.
DEFAULT_OPTIMIZER_GROUPS: dict[str, OptimizerGroup] = {
    "vision": OptimizerGroup(components=[s for s in SLOTS_IN_FLOW_ORDER if s != "llm"], lr=1e-4),
    "llm": OptimizerGroup(components=["llm"], lr=1e-5),
}
