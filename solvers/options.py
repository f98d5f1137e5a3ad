"""Options tables: one frozen dataclass per solver family states each option and its default once.

The same table gives `register_solver` its ``options=`` mapping (name -> default, in field order) and
the solver its typed values, so no default is written a second time in a ``.get(key, default)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["option_defaults", "read_options"]

T = TypeVar("T")


def option_defaults(table: type, drop: Iterable[str] = ()) -> dict[str, Any]:
    """``{option: default}`` of an options dataclass in field order, without the ``drop`` fields."""
    dropped = set(drop)
    return {f.name: f.default for f in dataclasses.fields(table) if f.name not in dropped}


def read_options(table: type[T], options: Mapping[str, Any], who: str) -> T:
    """The options table filled from ``options``; any name it does not have is a TypeError.

    Registered solvers never get here with an unknown name (the registry wrapper refuses it first,
    with the same sentence); this guards direct calls of the unwrapped functions.
    """
    names = [f.name for f in dataclasses.fields(table)]
    unknown = set(options) - set(names)
    if unknown:
        raise TypeError(f"{who} got unknown options {sorted(unknown)}; it takes: {', '.join(names)}")
    return table(**options)
