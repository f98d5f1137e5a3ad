"""ILP stage 3, variables: decisions with their swap points, and recompute chains with their time.

See docs/ilp.md (Variables; Constraints 1 and 4).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from solvers.ilp_model import Formulation
    from solvers.ilp_presolve import Closure

__all__ = ["add_decisions", "add_chains"]

INF = math.inf


def add_decisions(F: Formulation, can_r: np.ndarray, can_s: np.ndarray, swap_out_ends: dict[int, list[int]],
                  prefetch_points: dict[int, list[int]]) -> None:
    """KEEP / RECOMPUTE / SWAP per free activation; for a swap, one swap-out end and one copy-back
    point, the copy back not issued before the swap-out frees."""
    for a in np.flatnonzero(F.free):
        a = int(a)
        F.keep_var[a] = F.var(f"k{a}", "B", 0, 1)
        terms = {F.keep_var[a]: 1.0}
        if can_r[a]:
            F.recompute_var[a] = F.var(f"r{a}", "B", 0, 1)
            terms[F.recompute_var[a]] = 1.0
        if can_s[a]:
            F.swap_var[a] = v = F.var(f"s{a}", "B", 0, 1)
            terms[v] = 1.0
            done = F.swap_out_done_vars[a] = [(g, F.var(f"g{a}_{g}", "B", 0, 1)) for g in swap_out_ends[a]]
            back = F.prefetch_vars[a] = [(q, F.var(f"p{a}_{q}", "B", 0, 1)) for q in prefetch_points[a]]
            F.add({v: -1.0, **{z: 1.0 for _, z in done}}, 0, 0, "logic")
            F.add({v: -1.0, **{z: 1.0 for _, z in back}}, 0, 0, "logic")
            for q, zq in back:  # the copy back may not be issued before the swap-out frees
                later = [z for g, z in done if g > q]
                if later:
                    F.add({zq: 1.0, **{z: 1.0 for z in later}}, -INF, 1, "logic")
        F.add(terms, 1, 1, "logic")


def add_chains(F: Formulation, closures: dict[int, Closure]) -> dict[int, dict[int, float]]:
    """Member and shared-op variables of every RECOMPUTE target's chain, and the rows that tie them.

    Returns target -> chain time as terms (time units): each member's own ops, and each op shared by
    several members once, through its shared-op variable.
    """
    chain_time: dict[int, dict[int, float]] = {}
    for a, ch in closures.items():
        if a not in F.recompute_var:
            continue
        cv = {a: F.recompute_var[a]}
        for y in ch.members:
            if y != a:
                cv[y] = F.chain_member_var[(a, y)] = F.var(f"c{a}_{y}", "C", 0, 1)
        for y, s in ch.edges:  # s joins the chain when y is in it and s is RECOMPUTE
            F.add({F.recompute_var[s]: 1.0, cv[y]: 1.0, cv[s]: -1.0}, -INF, 1, "logic")
        for y, s in ch.no_swap:
            F.add({cv[y]: 1.0, F.swap_var[s]: 1.0}, -INF, 1, "logic")
        for y, s in ch.too_deep:
            F.add({cv[y]: 1.0, F.recompute_var[s]: 1.0}, -INF, 1, "logic")
        chain_time[a] = _chain_time_terms(F, a, ch.members, cv)
        ch.member_var = cv
    return chain_time


def _chain_time_terms(F: Formulation, a: int, members: list[int], cv: dict[int, int]) -> dict[int, float]:
    """Time of ``a``'s chain as terms: each op once per chain (a shared-op variable where shared)."""
    p = F.problem
    tu = F.time_unit
    count: dict[int, int] = {}
    for y in members:
        for o in p.recompute_ops[y].tolist():
            count[o] = count.get(o, 0) + 1
    tterms: dict[int, float] = {}
    for y in members:
        own = [o for o in p.recompute_ops[y].tolist() if count[o] == 1]
        if own:
            tterms[cv[y]] = tterms.get(cv[y], 0.0) + float(p.op_time_s[own].sum()) / tu
    for o, k in count.items():
        if k > 1:
            u = F.chain_op_var[(a, o)] = F.var(f"u{a}_{o}", "C", 0, 1)
            for y in members:
                if o in p.recompute_ops[y]:
                    F.add({cv[y]: 1.0, u: -1.0}, -INF, 0, "logic")
            tterms[u] = float(p.op_time_s[o]) / tu
    return tterms
