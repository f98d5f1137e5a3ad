"""Builders that go wrong in the ways a user's ``module:function`` can (tests of the scenario checks)."""

from __future__ import annotations

from typing import Any


def returns_a_dict(batch_size):  # no annotation: only calling it shows the wrong type
    """Returns the wrong type at run time."""
    return {"batch_size": batch_size}


def annotated_list(batch_size: int) -> list:
    """Declares the wrong type: refused when the scenario is loaded."""
    return [batch_size]


def untyped_any(batch_size: int, width: int = 4) -> Any:
    """``Any`` says nothing definite: accepted at load (and its options checked by name)."""
    return {"batch_size": batch_size, "width": width}


def raises(batch_size: int):
    """A builder that fails: the error must name it."""
    raise RuntimeError("cannot build this model")


def takes_anything(batch_size: int, **options):
    """Takes ``**options`` and passes them on: only calling it shows which it refuses."""
    from mutwo.zoo import toy_mlp

    return toy_mlp(batch_size, **options)
