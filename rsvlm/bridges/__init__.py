"""Bridges: LLM hidden states → mask-decoder prompts (see ``rsvlm.contracts.Bridge``)."""

from rsvlm.bridges.seg_token import SegTokenBridge
from rsvlm.bridges.tcp import TokenCompressionProjector

__all__ = ["SegTokenBridge", "TokenCompressionProjector"]
