"""The vision-language model's default stages and optimiser groups (the SPEX paper's)."""

from __future__ import annotations

from rsvlm.models.base import OptimizerGroup

#: Which components each stage trains (the SPEX paper's two stages, plus both at once). Empty
#: optional slots are dropped from a stage.
DEFAULT_STAGE_COMPONENTS: dict[str, list[str]] = {
    "text": ["cropper", "encoder", "fusion", "prompt_encoder", "prompt_fusion", "projector", "llm"],
    "mask": ["cropper", "encoder", "fusion", "prompt_encoder", "bridge", "mask_encoder", "decoder"],
    "joint": [
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
    ],
}

#: The SPEX paper's optimiser groups: the vision side at 1e-4, the LLM's adapters at 1e-5.
DEFAULT_OPTIMIZER_GROUPS: dict[str, OptimizerGroup] = {
    "vision": OptimizerGroup(
        components=[
            "cropper",
            "encoder",
            "fusion",
            "prompt_encoder",
            "prompt_fusion",
            "projector",
            "bridge",
            "mask_encoder",
            "decoder",
        ],
        lr=1e-4,
    ),
    "llm": OptimizerGroup(components=["llm"], lr=1e-5),
}
