"""one_line: what an error prints is one plain line."""

from __future__ import annotations

import argparse

import pytest
import torch

from rsvlm.io.text import one_line


def test_lines_are_stripped_and_joined_and_blank_lines_dropped():
    assert one_line("  first\n\n   second  \n\tthird\n") == "first second third"
    assert one_line(ValueError("a\nb")) == "a b"


def test_terminal_styling_is_removed():
    assert one_line("\x1b[1mdo this\x1b[0m only if \x1b[31;1mtrusted\x1b[0m") == "do this only if trusted"


def test_torchs_weights_only_refusal_prints_without_escape_codes(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"weights": torch.zeros(1), "extra": argparse.Namespace(run="x")}, path)
    with pytest.raises(Exception) as caught:
        torch.load(path, weights_only=True)
    text = one_line(caught.value)
    assert "\x1b" not in text and "\n" not in text and "Weights only load failed" in text
