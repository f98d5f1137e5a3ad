"""The one mode vocabulary of every solver: which decisions a plan may use.

``"both"``: KEEP, RECOMPUTE and SWAP; ``"recompute"``: KEEP and RECOMPUTE; ``"swap"``: KEEP and SWAP.
The vocabulary itself (`Mode`, `MODES`) is `mutwo.plan_space`'s, where a scenario's ``plan_space``
is mapped onto it; the solvers' checks of it are here.
"""

from __future__ import annotations

from mutwo.plan_space import MODES, Mode

__all__ = ["Mode", "MODES", "check_mode", "may_recompute", "may_swap"]


def check_mode(mode: str, allowed: tuple[str, ...] = MODES) -> str:
    """``mode`` when it is one of ``allowed``, else a ValueError naming the valid ones.

    ``"full"`` was the ILP solvers' old name of ``"both"``; it is refused with that fix spelled out
    rather than silently translated, so one word means one thing everywhere.
    """
    if mode == "full" and "both" in allowed:
        raise ValueError("mode 'full' is now called 'both' (KEEP, RECOMPUTE and SWAP): use mode='both'")
    if mode not in allowed:
        raise ValueError(f"mode must be one of {allowed}, got {mode!r}")
    return mode


def may_recompute(mode: str) -> bool:
    """Whether plans of ``mode`` may RECOMPUTE."""
    return mode != "swap"


def may_swap(mode: str) -> bool:
    """Whether plans of ``mode`` may SWAP."""
    return mode != "recompute"
