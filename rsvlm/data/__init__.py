"""Data: the batch contract and datamodule base (:mod:`rsvlm.data.base`), rasters, band specs,
spectral indices, tiling, loaders, generated scenes, and one folder per dataset family
(:mod:`rsvlm.data.spie` for SPEX, :mod:`rsvlm.data.segmentation` for MVPNet pre-training).

Submodules are imported on use (``from rsvlm.data.spie.apg import spectral_prompt``) so that the
light ones (bands, indices, APG) never pull in Lightning or torch.
"""
