"""ILP stage 5, time: the two host-link queues, accumulated delays, stalls, and the link cuts.

See docs/ilp.md (Constraints 6 to 9). Times are in model units.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

import numpy as np

from solvers.ilp_link_walk import TIME_MARGIN

if TYPE_CHECKING:
    from solvers.ilp_model import Formulation

__all__ = ["add_link_rows"]

INF = math.inf


def add_link_rows(F: Formulation, cum: np.ndarray, swap: np.ndarray, chain_time: dict[int, dict[int, float]]
                  ) -> None:
    """Queue tails, delays and stalls of every swappable activation, and the cuts that bound them.

    Time variables live in ``[0, horizon]``: compute + every chain at full length + twice every transfer.
    """
    swappers = sorted(F.swap_var)
    horizon = (cum[F.problem.n_ops] + sum(sum(t.values()) for t in chain_time.values())
               + 2 * float(swap[swappers].sum()) + 1)
    F.stats["horizon_units"] = horizon
    if not swappers:
        return
    _swap_out_rows(F, swappers, cum, swap, horizon)
    _delay_rows(F, swappers, chain_time, horizon)
    _copy_back_rows(F, swappers, cum, swap, horizon)
    _copy_back_cuts(F, swappers, cum, swap)
    _swap_out_cuts(F, swappers, cum, swap)


def _swap_out_rows(F: Formulation, swappers: list[int], cum: np.ndarray, swap: np.ndarray, horizon: float
                   ) -> None:
    """One FIFO link, issue order (last forward use, index); forward times are static."""
    lfu = F.problem.last_fwd_use
    prev = -1
    for a in sorted(swappers, key=lambda a: (int(lfu[a]), a)):
        q = F.swap_out_tail_var[a] = F.var(f"Q{a}", "C", 0, horizon, True)
        sv = F.swap_var[a]
        if prev >= 0:
            F.add({q: 1.0, prev: -1.0, sv: -float(swap[a])}, 0, INF, "time")
        F.add({q: 1.0, sv: -float(cum[lfu[a] + 1] + swap[a])}, 0, INF, "time")
        for g, z in F.swap_out_done_vars[a]:
            F.add({q: 1.0}, -INF, float(cum[g]) - TIME_MARGIN, "time", enforce=z)
        prev = q


def _delay_rows(F: Formulation, swappers: list[int], chain_time: dict[int, dict[int, float]], horizon: float
                ) -> None:
    """D(t) = stall + recompute before op t, at every prefetch candidate and first backward use of a
    swappable activation; each anchor's recompute and each stall enters the first D after it."""
    fbu = F.problem.first_bwd_use
    pos = sorted({q for a in swappers for q, _ in F.prefetch_vars[a]} | {int(fbu[a]) for a in swappers})
    for t in sorted({int(fbu[a]) for a in swappers}):
        F.stall_var[t] = F.var(f"stall{t}", "C", 0, horizon, True)
    rec_at: dict[int, dict[int, float]] = {}
    for a, tterms in chain_time.items():
        d = rec_at.setdefault(int(fbu[a]), {})
        for v, w in tterms.items():
            d[v] = d.get(v, 0.0) + w
    inc: dict[int, dict[int, float]] = {t: {} for t in pos}
    for u, terms_u in list(rec_at.items()) + [(u, {sv: 1.0}) for u, sv in F.stall_var.items()]:
        j = bisect.bisect_right(pos, u)
        if j < len(pos):
            d = inc[pos[j]]
            for v, w in terms_u.items():
                d[v] = d.get(v, 0.0) - w
    prev_d = -1
    for t in pos:
        dv = F.delay_var[t] = F.var(f"D{t}", "C", 0, horizon, True)
        terms = {dv: 1.0, **inc[t]}
        if prev_d >= 0:
            terms[prev_d] = -1.0
        F.add(terms, 0, 0, "time")
        prev_d = dv


def _copy_back_rows(F: Formulation, swappers: list[int], cum: np.ndarray, swap: np.ndarray, horizon: float
                    ) -> None:
    """One FIFO link, issue order (prefetch op, index): issued when its op is reached, not before its
    swap-out ended; the first backward use stalls until it arrives."""
    fbu = F.problem.first_bwd_use
    seq = sorted((q, a, z) for a in swappers for q, z in F.prefetch_vars[a])
    prev = -1
    for q, a, z in seq:
        h = F.var(f"H{a}_{q}", "C", 0, horizon, True)
        F.copy_back_tail_vars.append((q, a, h))
        if prev >= 0:
            F.add({h: 1.0, prev: -1.0, z: -float(swap[a])}, 0, INF, "time")
        F.add({h: 1.0, F.delay_var[q]: -1.0}, float(cum[q] + swap[a]), INF, "time", enforce=z)
        F.add({h: 1.0, F.swap_out_tail_var[a]: -1.0}, float(swap[a]), INF, "time", enforce=z)
        t = int(fbu[a])
        F.add({F.stall_var[t]: 1.0, F.delay_var[t]: 1.0, h: -1.0}, -float(cum[t]), INF, "time", enforce=z)
        prev = h


def _copy_back_cuts(F: Formulation, swappers: list[int], cum: np.ndarray, swap: np.ndarray) -> None:
    """Every copy issued at or after op P and needed by op t (fbu <= t) fits between T(P) = cum[P] + D(P)
    and T(t) + stall(t): one row of kind "cut" per (prefetch candidate, first backward use).

    Without the link cuts a fractional swap is free in the LP relaxation (its stall and swap-out rows
    are enforced by a binary, i.e. big-M) and the bound collapses to the compute time (docs/ilp.md).
    """
    fbu = F.problem.first_bwd_use
    by_t = sorted(swappers, key=lambda a: int(fbu[a]))
    fb_sorted = [int(fbu[a]) for a in by_t]
    seen: set[tuple[int, int]] = set()
    for a in swappers:
        t = int(fbu[a])
        for q, _ in F.prefetch_vars[a]:
            if (q, t) in seen:
                continue
            seen.add((q, t))
            lo, hi = bisect.bisect_left(fb_sorted, q), bisect.bisect_right(fb_sorted, t)
            terms: dict[int, float] = {}
            for b in by_t[lo:hi]:
                for q2, z in F.prefetch_vars[b]:
                    if q2 >= q:
                        terms[z] = float(swap[b])
            terms[F.stall_var[t]] = -1.0
            terms[F.delay_var[t]] = terms.get(F.delay_var[t], 0.0) - 1.0
            if q != t:
                terms[F.delay_var[q]] = terms.get(F.delay_var[q], 0.0) + 1.0
            F.add(terms, -INF, float(cum[t] - cum[q]), "cut")


def _swap_out_cuts(F: Formulation, swappers: list[int], cum: np.ndarray, swap: np.ndarray) -> None:
    """Swap-outs issued from e_a on and done by cum[g] fit in cum[g] - e_a: one "cut" row per
    (issue position, swap-out candidate)."""
    lfu = F.problem.last_fwd_use
    by_e = sorted(swappers, key=lambda a: (int(lfu[a]), a))
    e_sorted = [int(lfu[a]) for a in by_e]
    seen: set[tuple[int, int]] = set()
    for a in swappers:
        e = int(lfu[a])
        for g, _ in F.swap_out_done_vars[a]:
            if (e, g) in seen:
                continue
            seen.add((e, g))
            lo = bisect.bisect_left(e_sorted, e)
            terms: dict[int, float] = {}
            for b in by_e[lo:]:
                if cum[lfu[b] + 1] >= cum[g]:
                    break
                for g2, z in F.swap_out_done_vars[b]:
                    if g2 <= g:
                        terms[z] = float(swap[b])
            if len(terms) > 1:
                F.add(terms, -INF, float(cum[g] - cum[e + 1]), "cut")
