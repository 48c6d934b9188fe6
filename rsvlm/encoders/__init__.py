"""Encoders: image ``B×C×H×W`` (any band count) → multi-scale maps (see ``rsvlm.contracts.Encoder``)."""

from rsvlm.encoders.clip_pyramid import ClipPyramidEncoder
from rsvlm.encoders.internimage import InternImageEncoder
from rsvlm.encoders.timm_encoder import TimmEncoder

__all__ = ["ClipPyramidEncoder", "InternImageEncoder", "TimmEncoder"]
