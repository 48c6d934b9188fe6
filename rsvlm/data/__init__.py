"""Data: rasters, band specs, spectral indices, APG spectral prompts, SPIE records, datamodules.

Submodules are imported on use (``from rsvlm.data.spie.apg import spectral_prompt``) so that the
light ones (bands, indices, APG) never pull in Lightning or torch.
"""
