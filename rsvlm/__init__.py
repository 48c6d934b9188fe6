"""rsvlm: composable remote-sensing vision-language components for PyTorch Lightning.

Importing ``rsvlm`` is cheap: no LLM stack is loaded until a component that needs it is used.
"""

__version__ = "0.1.0"
