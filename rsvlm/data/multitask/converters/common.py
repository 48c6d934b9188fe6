"""What every converter shares: its error type and the image size read from a file header."""

from __future__ import annotations

import os

from rsvlm.contracts import RsvlmError
from rsvlm.data.raster import RasterError, read_header


class ConverterError(RsvlmError, ValueError):
    """An official annotation file does not have the expected form (one line naming the file and field)."""


def image_size(path: str | os.PathLike, where: str) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header.

    Raises:
        ConverterError: the file is missing or unreadable (names ``where`` and the path).
    """
    try:
        header = read_header(path)
    except FileNotFoundError:
        raise ConverterError(f"{where}: image file not found: {path}") from None
    except RasterError as error:
        raise ConverterError(f"{where}: {error}") from None
    return header.height, header.width


def require_file(path: str | os.PathLike, what: str) -> None:
    """Raise a ConverterError naming ``what`` when ``path`` is not a file."""
    if not os.path.isfile(path):
        raise ConverterError(f"{path}: {what} not found")
