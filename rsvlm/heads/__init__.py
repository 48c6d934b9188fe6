"""Heads: prompts + maps → outputs (SAM mask decoder head, UperNet segmentation head)."""

from rsvlm.heads.sam_decoder import SamMaskDecoderHead
from rsvlm.heads.upernet import UperNetSegHead

__all__ = ["SamMaskDecoderHead", "UperNetSegHead"]
