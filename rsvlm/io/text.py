"""Text for people: a multi-line message folded into the one line an error prints."""

from __future__ import annotations

import re

# Terminal styling (SGR) that some libraries put in their messages (torch's weights-only refusal
# prints its advice in bold): noise in a log file or a web page.
_TERMINAL_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def without_styling(text: str) -> str:
    """``text`` without terminal styling (bold, colours)."""
    return _TERMINAL_STYLE.sub("", str(text))


def one_line(message: str) -> str:
    """``message`` without terminal styling, its lines stripped and joined by spaces (blank lines
    dropped)."""
    return " ".join(line.strip() for line in without_styling(message).splitlines() if line.strip())
