"""rsvlm: composable remote-sensing vision-language components for PyTorch Lightning.

Importing ``rsvlm`` is cheap: no LLM stack is loaded until a component that needs it is used.
"""

__version__ = "0.1.0"


def load(path, recipe=None, device: str = "cpu"):
    """A trained model ready to predict: ``rsvlm.load(run_folder_or_checkpoint).predict(image, category="water")``.

    See :func:`rsvlm.inference.api.load` (the import is deferred so ``import rsvlm`` stays cheap).
    """
    from rsvlm.inference.api import load as _load

    return _load(path, recipe=recipe, device=device)
