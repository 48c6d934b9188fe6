"""Heads: prompts + maps → outputs (SAM mask decoder head)."""

from rsvlm.heads.sam_decoder import SamMaskDecoderHead

__all__ = ["SamMaskDecoderHead"]
