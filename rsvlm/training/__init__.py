"""Training: losses, metrics, optimiser groups, callbacks, checkpoint IO, trained-only checkpoints, LoRA export, pictures for the loggers."""
