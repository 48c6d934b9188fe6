"""Reading a YAML file (a recipe, a sweep) with errors that name the file and fit on one line.

PyYAML reports a syntax error over five lines with a caret under a copy of the offending line;
``rsvlm`` prints its errors as one line, so the reason and its position are folded here:
``sweep.yaml: not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from rsvlm.contracts import MissingFileError, RsvlmError


class YamlFileError(RsvlmError, ValueError):
    """A YAML file that cannot be read or parsed."""


def yaml_error_reason(err: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, 1-based, on one line.

    ``problem`` and ``problem_mark`` are set on syntax errors (``MarkedYAMLError``); other YAML
    errors fall back to their text with the lines joined.
    """
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem is None:
        return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def read_yaml(path: str | os.PathLike[str], what: str = "recipe") -> Any:
    """The parsed content of ``path`` (``None`` for an empty file).

    Args:
        path: the YAML file.
        what: what the file is, for the messages ("recipe", "sweep file").

    Raises:
        MissingFileError: there is no such file.
        YamlFileError: it cannot be read (a folder, no permission, not UTF-8) or is not valid YAML.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise YamlFileError(f"{path}: cannot read the {what}: {reason}") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise YamlFileError(f"{path}: the {what} is not valid YAML: {yaml_error_reason(err)}") from err
