"""Recompute chains in the iteration-time bound: who a chain must regenerate, and at what price.

A RECOMPUTE target ``a`` regenerates, as temporaries of its chain, every RECOMPUTE source that is not
resident at its anchor (`mutwo.schedule.recompute_chain`), recursively. The anchor is at or before
``a``'s first backward use ``fb_a``; so a member ``m`` that is RECOMPUTE and still off the device at op
``fb_a`` (its own anchor later than ``fb_a``) is not resident at ``a``'s anchor and joins the chain when
its parent in the chain does. The bound prices that with one variable per (target, member):
``w_{a,m} ≥ w_{a,parent} + off_{m,fb_a} − 1`` (``w_{a,a} = r_a``), each member at the time of the ops
that only it runs among the target and the members considered, so no op is counted twice and the sum
never exceeds the chain's time (docs/ilp.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mutwo.problem import Problem

__all__ = ["ChainMember", "chain_members", "CHAIN_DEPTH", "MAX_MEMBERS"]

CHAIN_DEPTH = 3  # sources followed from a target (1: its direct sources only)
MAX_MEMBERS = 20_000  # (target, member) pairs at most; past it depth is lowered (fewer rows only weaken)


@dataclass(frozen=True)
class ChainMember:
    """``member`` joins ``target``'s chain when ``parent`` does (``parent == target``: when the target is
    recomputed) and ``member`` is off the device at op ``at`` (the target's first backward use);
    ``extra_s`` is the time of the ops only it runs among those considered."""

    target: int
    member: int
    parent: int
    at: int
    extra_s: float


def _members_of(problem: Problem, a: int, can_r: np.ndarray, depth: int) -> list[tuple[int, int]]:
    """(member, parent) pairs, breadth first from ``a`` to ``depth``, through sources that may be
    recomputed and are in their gap at ``fb_a`` (off the device there when recomputed late)."""
    lf, fb = problem.last_fwd_use, problem.first_bwd_use
    at = int(fb[a])
    seen, out, frontier = {a}, [], [a]
    for _ in range(depth):
        nxt = []
        for x in frontier:
            for m in problem.recompute_sources[x].tolist():
                if m in seen:
                    continue
                seen.add(m)
                if can_r[m] and lf[m] < at < fb[m]:
                    out.append((m, x))
                    nxt.append(m)
        frontier = nxt
    return out


def chain_members(problem: Problem, can_r: np.ndarray, depth: int = CHAIN_DEPTH,
                  max_members: int = MAX_MEMBERS) -> list[ChainMember]:
    """Every (target, member) pair of the module doc for the recomputable targets, to ``depth`` (lowered
    until at most ``max_members`` pairs), parents before their children."""
    targets = np.flatnonzero(can_r).tolist()
    for d in range(depth, 0, -1):
        found = {a: _members_of(problem, a, can_r, d) for a in targets}
        if sum(len(v) for v in found.values()) <= max_members:
            break
    out = []
    op_time = problem.op_time_s
    for a, pairs in found.items():
        if not pairs:
            continue
        ops = [problem.recompute_ops[a], *(problem.recompute_ops[m] for m, _ in pairs)]
        count = np.bincount(np.concatenate(ops), minlength=problem.n_ops)
        for (m, parent), m_ops in zip(pairs, ops[1:], strict=True):
            own = m_ops[count[m_ops] == 1]
            out.append(ChainMember(a, m, parent, int(problem.first_bwd_use[a]), float(op_time[own].sum())))
    return out
