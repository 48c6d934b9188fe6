"""experiments: ablation sweeps, paper tables, run records and meta-device summaries."""
