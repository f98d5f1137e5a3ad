"""ILP stage 1, presolve: what every plan holds, which decisions stay free, what each chain may regenerate.

All reductions are exact: no optimal plan is cut off (docs/ilp.md, Presolve).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import default_prefetch, member_transients
from solvers.ilp_link_walk import TIME_MARGIN, static_starts
from solvers.ilp_options import IlpOptions
from solvers.modes import may_recompute, may_swap

__all__ = ["Closure", "Presolved", "NoPlanFits", "presolve", "drop_lost_swaps", "chain_closures", "chain_hot"]

PAIR_CAP = 12_000  # most (target, chain member) pairs before the chain depth is limited
_DEPTHS = (8, 6, 4, 3, 2)  # chain depths tried, deepest first, when the pairs exceed the cap
_ROUNDS = 4  # presolve rounds (fixing KEEPs shortens chains, which can cool more positions)


@dataclass
class Closure:
    """What a recompute chain of one target may regenerate (docs/ilp.md, Presolve 5)."""

    members: list[int]  # the target and every activation its chain may regenerate, sorted
    edges: list[tuple[int, int]]  # (member, recomputable open source): the source joins if RECOMPUTE
    no_swap: list[tuple[int, int]]  # (member, swappable open source): it may not be SWAP
    too_deep: list[tuple[int, int]]  # (member, source past the depth limit): it may not be RECOMPUTE
    member_var: dict[int, int] = field(default_factory=dict)  # member -> "regenerated" (target: its r)


@dataclass
class Presolved:
    """What presolve settles before any variable exists; times in model units, bytes in bytes."""

    cum: np.ndarray  # static start of each op, and the end of the last
    swap: np.ndarray  # transfer time of each activation
    base: np.ndarray  # fixed + transient bytes while each op runs
    keep_all: np.ndarray  # memory at each op when every activation is kept
    first_free_op: np.ndarray  # per activation: first op that can run without it once swapped out (g0)
    default_prefetch: np.ndarray  # per activation
    free: np.ndarray  # bool: the decision is not fixed KEEP
    can_r: np.ndarray  # bool: may be RECOMPUTE
    can_s: np.ndarray  # bool: may be SWAP
    must: np.ndarray  # bytes every plan holds at each op, given the fixed KEEPs
    closures: dict[int, Closure]
    depth: int | None  # chain depth limit in force (None: unlimited)


class NoPlanFits(Exception):
    """Presolve's proof that no plan fits the budget; the message names the op."""


def _range_add(n: int, start: np.ndarray, stop: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sum of ``w[i]`` over the inclusive ranges ``[start[i], stop[i]]`` at each of ``n`` positions."""
    ok = stop >= start
    diff = np.zeros(n + 1)
    np.add.at(diff, start[ok], w[ok])
    np.add.at(diff, stop[ok] + 1, -w[ok])
    return np.rint(np.cumsum(diff[:n])).astype(np.int64)


def chain_closures(problem: Problem, free: np.ndarray, can_r: np.ndarray, can_s: np.ndarray,
                   depth: int | None) -> dict[int, Closure]:
    """Every activation a recompute chain of ``a`` may regenerate, within ``depth`` links.

    A source of a member is *open* at ``a``'s anchor when it is free, recomputable or swappable, and
    not resident there whatever its decision (KEEP, or brought back for its own backward use).
    """
    fbu, lbu = problem.first_bwd_use, problem.last_bwd_use
    out: dict[int, Closure] = {}
    for a in np.flatnonzero(can_r):
        a = int(a)
        t = int(fbu[a])
        level = {a: 0}
        ch = Closure([], [], [], [])
        queue = deque([a])
        while queue:
            y = queue.popleft()
            for s in problem.recompute_sources[y]:
                s = int(s)
                if not free[s] or (fbu[s] <= t <= lbu[s]):
                    continue
                if can_s[s]:
                    ch.no_swap.append((y, s))
                if not can_r[s]:
                    continue
                if s not in level:
                    if depth is not None and level[y] + 1 > depth:
                        ch.too_deep.append((y, s))
                        continue
                    level[s] = level[y] + 1
                    queue.append(s)
                ch.edges.append((y, s))
        ch.members = sorted(level)
        out[a] = ch
    return out


def chain_hot(problem: Problem, closures: dict[int, Closure], keep_all: np.ndarray, budget: int) -> np.ndarray:
    """Ops where some plan's recompute chains might exceed the budget (docs/cost_model.md, Memory).

    Upper bound: fixed - outputs + every activation alive + the largest chain with all its members
    held at once, plus the largest in-kernel scratch of their ops.
    """
    most = np.zeros(problem.n_ops, np.int64)
    scratch = member_transients(problem)
    for a, ch in closures.items():
        mem = ch.members
        t = int(problem.first_bwd_use[a])
        most[t] = max(most[t], int(problem.recompute_temp_bytes[mem].sum() + problem.act_bytes[mem].sum())
                      + max(scratch[m] for m in mem))
    act = keep_all - problem.fixed_bytes - problem.op_transient_bytes
    return (most > 0) & (problem.fixed_bytes - problem.op_output_bytes + act + most > budget)


def _closures_within_cap(problem: Problem, free: np.ndarray, can_r: np.ndarray, can_s: np.ndarray,
                         depth_opt: int | None) -> tuple[dict[int, Closure], int | None]:
    """Closures under ``max_chain_depth`` (-1: unlimited unless the pairs exceed `PAIR_CAP`, then the
    deepest of `_DEPTHS` under it, else 1), and the depth used."""
    if depth_opt != -1:
        return chain_closures(problem, free, can_r & free, can_s & free, depth_opt), depth_opt
    closures = chain_closures(problem, free, can_r & free, can_s & free, None)
    if sum(len(c.members) for c in closures.values()) <= PAIR_CAP:
        return closures, None
    depth = 1
    for k in _DEPTHS:
        cl = chain_closures(problem, free, can_r & free, can_s & free, k)
        if sum(len(c.members) for c in cl.values()) <= PAIR_CAP:
            depth = k
            break
    return chain_closures(problem, free, can_r & free, can_s & free, depth), depth


def presolve(problem: Problem, budget: int, options: IlpOptions, time_unit: float) -> Presolved:
    """Floor check, swap viability, hot positions and fixed KEEPs to a fixed point (docs/ilp.md).

    Raises `NoPlanFits` when what every plan holds somewhere exceeds ``budget``.
    """
    p = problem
    n = p.n_ops
    lfu, fbu = p.last_fwd_use, p.first_bwd_use
    nbytes = p.act_bytes.astype(np.int64)
    cum = static_starts(p) / time_unit
    swap = p.swap_time_s / time_unit
    base = (p.fixed_bytes + p.op_transient_bytes).astype(np.int64)
    gap = fbu - lfu - 1  # positions an activation may leave the device
    can_r = p.recomputable & may_recompute(options.mode) & (gap > 0)
    can_s = p.swappable & may_swap(options.mode) & (gap > 0)
    # earliest op that can run without a swapped-out activation: its swap-out alone on the link
    g0 = np.searchsorted(cum, cum[lfu + 1] + swap + TIME_MARGIN, side="left")
    g0 = np.maximum(g0, lfu + 1)
    pdef = default_prefetch(p)
    can_s &= g0 < fbu
    free = can_r | can_s
    floor, floor_t = p.peak_floor(movable=free)
    if floor > budget:
        raise NoPlanFits(f"budget {budget} B is below what every plan holds at op {floor_t} "
                         f"({p.op_names[floor_t]!r}): {floor} B (fixed + transient + activations in use there)")
    keep_all = base + _range_add(n, p.created, p.last_bwd_use, nbytes.astype(float))
    for _ in range(_ROUNDS):  # to a fixed point (fixing KEEPs shortens chains, which frees positions)
        closures, depth = _closures_within_cap(p, free, can_r, can_s, options.max_chain_depth)
        hot = (keep_all > budget) | chain_hot(p, closures, keep_all, budget)  # where a plan may exceed it
        hot_cum = np.concatenate([[0], np.cumsum(hot)])
        in_gap_hot = (hot_cum[fbu] - hot_cum[lfu + 1]) > 0
        if not (free & ~in_gap_hot).any():
            break
        free &= in_gap_hot
    must = (base + _range_add(n, p.created, lfu, nbytes.astype(float))
            + _range_add(n, fbu, p.last_bwd_use, nbytes.astype(float)))
    must += _range_add(n, (lfu + 1)[~free], (fbu - 1)[~free], nbytes[~free].astype(float))
    return Presolved(cum=cum, swap=swap, base=base, keep_all=keep_all, first_free_op=g0, default_prefetch=pdef,
                     free=free, can_r=can_r & free, can_s=can_s & free, must=must, closures=closures, depth=depth)


def drop_lost_swaps(problem: Problem, pre: Presolved, swappable: np.ndarray) -> None:
    """Fix KEEP what lost its swap option to the candidate points and cannot be recomputed; then the
    closures again, over the final free set."""
    p = problem
    pre.can_s = swappable
    lost = pre.free & ~pre.can_r & ~pre.can_s
    if lost.any():
        pre.free &= ~lost
        lfu, fbu = p.last_fwd_use, p.first_bwd_use
        nbytes = p.act_bytes.astype(np.int64)
        pre.must += _range_add(p.n_ops, (lfu + 1)[lost], (fbu - 1)[lost], nbytes[lost].astype(float))
    pre.closures = chain_closures(p, pre.free, pre.can_r & pre.free, pre.can_s & pre.free, pre.depth)
