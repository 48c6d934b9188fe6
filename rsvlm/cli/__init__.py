"""The ``rsvlm`` command: a lazy dispatcher (``rsvlm --help`` loads no LLM stack)."""

from rsvlm.cli.main import main

__all__ = ["main"]
