"""Text for people: a multi-line message folded into the one line an error prints."""

from __future__ import annotations


def one_line(message: str) -> str:
    """``message`` with its lines stripped and joined by spaces (blank lines dropped)."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())
