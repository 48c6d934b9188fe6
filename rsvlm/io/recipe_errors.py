"""One-line errors for a recipe that does not parse or whose components cannot be built.

jsonargparse reports a bad recipe value as a tree (``Parser key "model": … Problem with given
class_path … Parser key "fusion": …``) after a page of usage text, and a component whose
constructor refuses its arguments (a missing checkpoint, a band count it cannot take) raises
from deep inside the instantiation. Both become a :class:`RecipeError` here: the recipe file(s),
the dotted field (``model.init_args.fusion.init_args.form``) and the innermost reason, on one
line, which ``rsvlm`` prints as ``rsvlm: error: …`` (``--debug`` keeps the original traceback
through the exception's ``__cause__``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from jsonargparse import ArgumentError, Namespace

from rsvlm.contracts import RsvlmError
from rsvlm.io.text import one_line

# Lines of jsonargparse's error tree that frame the reason rather than give it.
_FRAME_PREFIXES = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
)
_PARSER_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":(?: (?P<reason>.+))?$')
_CLASS_PATH = re.compile(r"^Problem with given class_path '(?P<path>[^']+)':$")
_NOT_ACCEPTED = re.compile(r"^Option '(?P<key>[^']+)' is not accepted$")
_OPTION_REFUSED = re.compile(
    r"^(?:Subcommand '[^']+'|Group '(?P<group>[^']+)') does not accept option '(?P<key>[^']+)'$"
)
_SHORT_VALUE = 60
# A "Given value" that is the parser's own object, not what the user wrote.
_OBJECT_VALUES = ("NestedArg(", "Namespace(", "{")


class RecipeError(RsvlmError, ValueError):
    """A recipe (or a command-line override of it) names a field, value or component that
    cannot be used; the message names the recipe file and the dotted field."""


def recipe_sources(args: Sequence[str]) -> str:
    """The recipe files ``args`` read (``--config X``, ``-c X``, ``--config=X``), joined by ``+``;
    ``"the command line"`` when there is none."""
    files: list[str] = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return " + ".join(files) if files else "the command line"


def condense_parse_error(message: str) -> tuple[str | None, str]:
    """``(field, reason)`` from jsonargparse's multi-line parse error.

    The field is the deepest chain of ``Parser key`` entries that ends in a reason, written as
    the recipe writes it (``init_args`` between a component and its argument); the reason is
    that chain's innermost line(s). A message of another shape gives ``(None, one line)``.
    """
    chain: list[tuple[int, str, str]] = []  # (indent, "key" | "class", value)
    best: tuple[list[tuple[int, str, str]], list[str]] | None = None
    given: str | None = None

    def keep(reason: str) -> None:
        """Keep ``reason`` when its chain is the deepest so far (or that chain again)."""
        nonlocal best
        if best is None or len(chain) > len(best[0]):
            best = (list(chain), [reason])
        elif [c[1:] for c in chain] == [c[1:] for c in best[0]]:
            best[1].append(reason)

    for raw in message.splitlines():
        text = raw.strip().removeprefix("- ").strip()
        if not text:
            continue
        indent = len(raw) - len(raw.lstrip())
        while chain and chain[-1][0] >= indent:
            chain.pop()
        if match := _PARSER_KEY.match(text):
            chain.append((indent, "key", match["key"]))
            if match["reason"]:  # the key and its reason on one line
                keep(match["reason"])
        elif match := _CLASS_PATH.match(text):
            chain.append((indent, "class", match["path"]))
        elif text.startswith("Given value:"):
            given = text.removeprefix("Given value:").strip()
        elif not text.startswith(_FRAME_PREFIXES):
            keep(text)
    if best is None or not best[0]:
        text = one_line(message)
        if match := _OPTION_REFUSED.match(text):
            group = f"{match['group']}." if match["group"] else ""
            return f"{group}{match['key']}", "not an accepted option"
        return None, text
    entries, reasons = best
    field_parts: list[str] = []
    component: str | None = None
    for _, kind, value in entries:
        if kind == "key":
            field_parts.append(f"init_args.{value}" if component else value)
            component = None
        else:
            component = value
    reason = "; ".join(reasons)
    if component and (match := _NOT_ACCEPTED.match(reasons[0])):
        field_parts.append(f"init_args.{match['key']}")
        reason = f"not an argument of {component}"
    elif component:
        reason = f"class_path '{component}': {reason}"
    if given and len(given) <= _SHORT_VALUE and "Got value" not in reason and not given.startswith(_OBJECT_VALUES):
        reason = f"{reason} (given: {given})"
    return ".".join(field_parts), reason


def parse_error(message: str, where: str) -> RecipeError:
    """The :class:`RecipeError` for jsonargparse's parse error ``message`` on the recipe ``where``."""
    field, reason = condense_parse_error(message)
    return RecipeError(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")


def class_paths(config: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted field, class_path)`` of every component in a parsed config, outermost first."""
    if isinstance(config, Namespace | Mapping):
        entries = dict(vars(config) if isinstance(config, Namespace) else config)
        if isinstance(entries.get("class_path"), str) and prefix:
            yield prefix.rstrip("."), entries["class_path"]
        for key, value in entries.items():
            yield from class_paths(value, f"{prefix}{key}.")
    elif isinstance(config, list | tuple):
        for i, value in enumerate(config):
            yield from class_paths(value, f"{prefix}{i}.")


def failing_component(traceback: TracebackType | None, config: Any) -> tuple[str, str] | None:
    """``(field, class_path)`` of the innermost recipe component whose constructor is on the
    traceback; ``("trainer", "Trainer")`` when only the Trainer's is; None when neither is."""
    fields: dict[type, tuple[str, str]] = {}
    for field, path in class_paths(config):
        cls = _import_class(path)
        if cls is not None:
            fields.setdefault(cls, (field, path))
    found: tuple[str, str] | None = None
    while traceback is not None:
        frame = traceback.tb_frame
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if owner is not None:
            if type(owner) in fields:
                found = fields[type(owner)]
            elif found is None and type(owner).__name__ == "Trainer":
                found = ("trainer", "Trainer")
        traceback = traceback.tb_next
    return found


def _import_class(path: str) -> type | None:
    """The class a recipe's ``class_path`` names (a re-export resolves to the defining class)."""
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def constructor_exception(exc: BaseException) -> BaseException:
    """The exception a constructor raised, under the reports jsonargparse wraps it in.

    jsonargparse re-raises a constructor's exception inside its own union-type report; this
    follows the chain (``__cause__``, else ``__context__``) past every exception raised in
    jsonargparse's code, and no further, so a constructor's own chain stays as it raised it.
    """
    while _raised_in_jsonargparse(exc) and (earlier := exc.__cause__ or exc.__context__) is not None:
        exc = earlier
    return exc


def _raised_in_jsonargparse(exc: BaseException) -> bool:
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and "jsonargparse" in Path(frame.tb_frame.f_code.co_filename).parts


def build_error(exc: Exception, config: Any, where: str) -> RecipeError:
    """The :class:`RecipeError` for ``exc``, raised while building the components of ``config``
    (parsed from the recipe ``where``)."""
    inner = constructor_exception(exc)
    reason = f"{type(inner).__name__}: {one_line(str(inner))}"
    component = failing_component(inner.__traceback__, config)
    if component is None:
        return RecipeError(f"{where}: {reason}")
    field, path = component
    return RecipeError(f"{where}: {field} ({path}) could not be built: {reason}")


def parse_and_build(parser: Any, config: Mapping[str, Any], where: str) -> Namespace:
    """``parser``'s classes built from the recipe sections ``config`` (read from ``where``); a
    section that does not parse or a component that cannot be built is one :class:`RecipeError`."""
    try:
        parsed = parser.parse_object(config)
    except ArgumentError as exc:
        raise parse_error(str(exc), where) from exc
    try:
        return parser.instantiate(parsed)
    except Exception as exc:
        raise build_error(exc, parsed, where) from exc
