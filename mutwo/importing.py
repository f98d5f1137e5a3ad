"""Import a ``module:function`` a user names (a model builder, a solver), with errors that say what
is wrong: a malformed path, a module that does not import, a misspelt function (closest names)."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

__all__ = ["import_named"]


def import_named(path: str, kind: str, example: str, error: type[Exception] = ValueError) -> tuple[str, Any]:
    """The function name and the object ``path`` (``module:function``) names; ``kind`` ("solver",
    "model") and ``example`` word the ``error`` raised. Whether the object is a usable function is the
    caller's check."""
    module_name, _, fn_name = path.partition(":")
    if not module_name or not fn_name or ":" in fn_name:
        raise error(f"{path!r} is not 'module:function' (e.g. {example!r})")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise error(f"cannot import module {module_name!r} for {kind} {path!r}: {type(exc).__name__}: {exc} "
                    f"(is it on PYTHONPATH? python -m puts the current directory there)") from exc
    fn = getattr(module, fn_name, None)
    if fn is None:
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(fn_name, public, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise error(f"module {module_name!r} has no function {fn_name!r}{hint}")
    return fn_name, fn
