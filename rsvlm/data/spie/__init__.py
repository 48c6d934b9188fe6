"""SPIE: the SPEX instruction data (APG spectral prompts, descriptions, records, datamodule)."""
