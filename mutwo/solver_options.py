"""A solver option's declaration: its default and the values it accepts, checked before a run.

The accepted values are a type hint: ``Literal["both", "recompute", "swap"]``, ``int``, ``float``,
``bool``, ``str``, ``None``, unions of them, any class (an instance is accepted), and ranges as
``Annotated[int, Ge(1)]`` (``Ge``, ``Gt``, ``Le``, ``Lt`` from ``annotated_types``, re-exported
here). A solver declares them once, as the fields of a frozen dataclass (`options_from_table`) or as
the annotations of its keyword parameters; the registry keeps them (docs/solvers.md). Values are
checked with pydantic in strict mode (no ``"3"`` for 3, no ``1`` for true), the message naming the
closest allowed value. Torch-free.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import types
import typing
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt

__all__ = ["Option", "NO_DEFAULT", "options_from_table", "options_from_signature", "check_value", "describe",
           "Ge", "Gt", "Le", "Lt"]


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()  # an option declared by name only: its default is the solver's business


@dataclass(frozen=True)
class Option:
    """One option: its default (`NO_DEFAULT` when not stated) and the values it accepts (``Any``: any)."""

    default: Any = NO_DEFAULT
    type: Any = Any


def _hints(obj: Any, strict: bool) -> dict[str, Any]:
    """Resolved type hints, ``Annotated`` kept. Hints that do not resolve (a name only imported under
    TYPE_CHECKING, a table defined inside a function) are a TypeError for a table (``strict``), and a
    RuntimeWarning for a signature, whose options are then not checked."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception as exc:
        what = getattr(obj, "__qualname__", repr(obj))
        if strict:
            raise TypeError(f"the type hints of options table {what} do not resolve ({type(exc).__name__}: {exc}); "
                            f"define it at module level, with the names its hints use imported there") from None
        warnings.warn(f"the options of {what} are not checked: its annotations do not resolve "
                      f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=4)
        return {}


def options_from_table(table: type, drop: Iterable[str] = ()) -> dict[str, Option]:
    """The options of a frozen dataclass, in field order: each field's default and type hint."""
    if not (isinstance(table, type) and dataclasses.is_dataclass(table)):
        raise TypeError(f"an options table is a dataclass, not {table!r}")
    dropped, hints = set(drop), _hints(table, strict=True)
    return {f.name: Option(NO_DEFAULT if f.default is dataclasses.MISSING else f.default, hints.get(f.name, Any))
            for f in dataclasses.fields(table) if f.name not in dropped}


def options_from_signature(fn: Callable) -> tuple[dict[str, Option], bool] | None:
    """(the keyword parameters after ``problem, budget_bytes``, takes ``**kwargs``); None when the
    signature cannot be read. A parameter's annotation is its type (unannotated: any value)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    hints = _hints(fn, strict=False)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skip = {p.name for p in positional[:2]}  # problem, budget_bytes (passed by position)
    out = {p.name: Option(NO_DEFAULT if p.default is p.empty else p.default, hints.get(p.name, Any))
           for p in params if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return out, any(p.kind == p.VAR_KEYWORD for p in params)


# ---------------------------------------------------------------------- checking
@functools.lru_cache(maxsize=256)
def _adapter(tp: Any):
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(tp, config=ConfigDict(strict=True, arbitrary_types_allowed=True))


def _literals(tp: Any) -> list:
    """Every literal value inside ``tp`` (through unions and Annotated)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return list(typing.get_args(tp))
    if origin is Annotated:
        return _literals(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [v for arm in typing.get_args(tp) for v in _literals(arm)]
    return []


def _accepts(tp: Any, value: Any) -> bool:
    from pydantic import ValidationError

    try:
        adapter = _adapter(tp)
    except Exception:  # a hint pydantic cannot build a check for: a class is still an isinstance check
        return not isinstance(tp, type) or isinstance(value, tp)
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def check_value(solver: str, option: str, value: Any, tp: Any) -> None:
    """ValueError when ``value`` is not one ``tp`` accepts: ``mutwo_greedy option 'mode' is 'recomput';
    did you mean 'recompute'? it takes 'both', 'recompute' or 'swap'``."""
    if tp is Any or _accepts(tp, value):
        return
    close = difflib.get_close_matches(value, [v for v in _literals(tp) if isinstance(v, str)], n=1, cutoff=0.5) \
        if isinstance(value, str) else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"{solver} option {option!r} is {_shown(value)}; {hint}it takes {describe(tp)}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------- describing
_BOUNDS = {Ge: ">=", Gt: ">", Le: "<=", Lt: "<"}


def _bound(c: Any) -> str:
    for kind, sign in _BOUNDS.items():
        if isinstance(c, kind):
            return f"{sign} {next(iter(dataclasses.asdict(c).values()))}"
    return str(c)


def _one_of(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def describe(tp: Any) -> str:
    """The accepted values in words: ``'both', 'recompute' or 'swap'``, ``an integer >= 1 or null``."""
    if tp is Any:
        return "any value"
    if tp is type(None) or tp is None:
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _one_of([repr(v) for v in typing.get_args(tp)])
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        return f"{describe(base)} {' and '.join(_bound(c) for c in meta)}"
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(tp)
        return _one_of([w for arm in arms for w in (["true", "false"] if arm is bool else
                                                    [repr(v) for v in typing.get_args(arm)]
                                                    if typing.get_origin(arm) is Literal else [describe(arm)])])
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in words:
        return words[tp]
    return f"a {getattr(tp, '__name__', str(tp))}"
