"""inference: tiled prediction on scenes of any size, stitching, and the files users open (GeoTIFF, PNG, JSON)."""
