"""SPIE: the SPEX instruction data.

``apg`` (spectral prompts), ``describe`` (responses), ``records`` (the record and its JSON-lines
file), ``sources`` (input datasets and class merging), ``tiles`` (tile planning, one tile's
records), ``builder`` (the resumable, parallel build), ``dataset`` (records → samples),
``datamodule`` (:class:`~rsvlm.data.spie.datamodule.SpieDataModule`), ``predict_dataset``
(tiles of scenes of any size for prediction).
"""
