"""Fusion: encoder maps → one fused map + visual tokens (see ``rsvlm.contracts.Fusion``)."""

from rsvlm.fusion.msam import MSAM
from rsvlm.fusion.projector import MLPProjector
from rsvlm.fusion.single_scale import SingleScaleFusion
from rsvlm.fusion.upernet import UperNetFusion

__all__ = ["MSAM", "MLPProjector", "SingleScaleFusion", "UperNetFusion"]
