"""Applying dotted-key overrides to a recipe and resolving a run's full config.

An override key is a dotted path into the recipe (``model.init_args.fusion``); missing levels
are created, an integer part indexes a list. Its value replaces the old one, except that a dict
*without* ``class_path`` is merged into an existing dict (recursively); a dict *with*
``class_path`` always replaces the whole subtree, so the old component's ``init_args`` never
leak into the new one.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from rsvlm.experiments.sweep.spec import SweepError
from rsvlm.io.yaml_file import YamlFileError, read_yaml

_CLASS_FIELDS = ("class_path", "init_args", "dict_kwargs")


def _is_class_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        old = dst.get(key)
        if (
            isinstance(old, str)
            and isinstance(value, dict)
            and not _is_class_spec(value)
            and set(value) <= set(_CLASS_FIELDS)
        ):
            old = dst[key] = {"class_path": old}  # jsonargparse's `key: some.Class` shorthand
        if isinstance(value, dict) and not _is_class_spec(value) and isinstance(old, dict):
            _merge(old, value)
        else:
            dst[key] = copy.deepcopy(value)


def apply_override(config: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` of ``config`` to ``value`` in place (rules in the module docstring)."""
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, here)]
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and parts[depth + 1] in _CLASS_FIELDS:
                child = node[part] = {"class_path": child}
            node = child
        if not isinstance(node, (dict, list)):
            raise SweepError(
                f"override {key!r}: {here!r} holds a {type(node).__name__} value, cannot set a key inside it"
            )
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = copy.deepcopy(value)
    else:
        _merge(node, {last: value})


def _list_index(node: list[Any], part: str, here: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise SweepError(f"override {here!r}: this level is a list; expected an integer index, got {part!r}") from None
    if not -len(node) <= index < len(node):
        raise SweepError(f"override {here!r}: index {index} out of range for a list of {len(node)}")
    return index


def resolve_config(base_path: str | os.PathLike[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """Load the base recipe and apply ``overrides`` (dotted key -> value) in order."""
    base_path = Path(base_path)
    try:
        config = read_yaml(base_path, "base recipe")
    except (OSError, YamlFileError) as err:
        raise SweepError(str(err)) from err
    if not isinstance(config, dict):
        raise SweepError(f"{base_path}: expected a recipe mapping (seed_everything, trainer, model, data)")
    for key, value in overrides.items():
        apply_override(config, key, value)
    return config


def dump_config(config: dict[str, Any]) -> str:
    """YAML text of a resolved config, keys in recipe order."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
