"""training: losses, metrics, optimisers, callbacks, checkpoint IO and picture logging used by the models."""
