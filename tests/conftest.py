"""Settings every test shares."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _pinned_load_class():
    """Profiles are cached per machine load class (idle / busy, `mutwo.profile.load_class`). Tests that
    compare two runs through one cache (resume, determinism) must not see the class change between the
    runs as the shared machine's load moves, so it is pinned for the session (subprocesses inherit it);
    tests/test_profile_cache.py checks the class itself with the pin removed."""
    old = os.environ.get("MUTWO_LOAD_CLASS")
    os.environ["MUTWO_LOAD_CLASS"] = "pinned-by-tests"
    yield
    if old is None:
        os.environ.pop("MUTWO_LOAD_CLASS", None)
    else:
        os.environ["MUTWO_LOAD_CLASS"] = old
