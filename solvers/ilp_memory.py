"""ILP stage 4, memory: which positions get a row, residency terms, op rows and chain member rows.

See docs/ilp.md (Interval liveness; Constraints 2, 3 and 5).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import member_peaks

if TYPE_CHECKING:
    from solvers.ilp_model import Formulation

__all__ = ["check_positions", "prune_dominated", "resident_var", "existing_resident_var", "add_op_rows",
           "add_chain_rows"]

INF = math.inf
DOMINANCE_WINDOW = 8  # checks compared on each side when pruning dominated ones


def check_positions(must: np.ndarray, keep_all: np.ndarray, bounds: np.ndarray, budget: int
                    ) -> tuple[np.ndarray, int]:
    """Per segment between boundaries, the op with the largest must-hold memory, when keep-all memory
    there exceeds ``budget``; and the number of segments."""
    seg_stop = np.concatenate([bounds[1:], [len(must)]])
    checks = []
    for s0, s1 in zip(bounds.tolist(), seg_stop.tolist(), strict=True):
        c = s0 + int(np.argmax(must[s0:s1]))
        if keep_all[c] > budget:
            checks.append(c)
    return np.array(checks, np.int64), len(bounds)


def prune_dominated(p: Problem, checks: np.ndarray, free: np.ndarray, must: np.ndarray,
                    G: dict, C: dict, window: int = DOMINANCE_WINDOW) -> np.ndarray:
    """Drop check positions whose memory can never exceed a nearby check's, for any plan.

    ``c1`` is dominated by ``c2`` when must(c2) - must(c1) plus, for every free activation, the least
    its variable residency can rise from c1 to c2 is >= 0 (see docs/ilp.md). Chain memory has rows of
    its own, so anchors are ordinary positions here. ``G`` / ``C``: swap-out ends / prefetch points.
    """
    if len(checks) < 2:
        return checks
    fa = np.flatnonzero(free)
    lfu, fbu = p.last_fwd_use[fa], p.first_bwd_use[fa]
    nb = p.act_bytes[fa].astype(np.float64)
    ingap = (lfu[None, :] < checks[:, None]) & (checks[:, None] < fbu[None, :])  # [k, f]
    # number of swap-out / copy-back candidates at or before each check, per activation
    gcnt = np.zeros((len(checks), len(fa)), np.int32)
    pcnt = np.zeros((len(checks), len(fa)), np.int32)
    for j, a in enumerate(fa.tolist()):
        if a in G:
            gcnt[:, j] = np.searchsorted(np.asarray(G[a]), checks, side="right")
            pcnt[:, j] = np.searchsorted(np.asarray(C[a]), checks, side="right")
    alive = np.ones(len(checks), bool)
    for i in range(len(checks)):
        lo, hi = max(0, i - window), min(len(checks), i + window + 1)
        for j in range(lo, hi):
            if j == i or not alive[j]:
                continue
            drop = np.zeros(len(fa), bool)
            drop |= ingap[i] & ~ingap[j]
            both = ingap[i] & ingap[j]
            if j > i:
                drop |= both & (gcnt[j] > gcnt[i])
            else:
                drop |= both & (pcnt[i] > pcnt[j])
            if must[checks[j]] - must[checks[i]] - float(nb[drop].sum()) >= 0:
                alive[i] = False
                break
    return checks[alive]


def resident_var(F: Formulation, a: int, c: int) -> int:
    """The variable that is 1 when ``a`` is resident at gap position ``c`` (made on first use).

    resident = k + sum(z_g: g > c) + sum(z_p: p <= c), constant between candidate points; one
    continuous variable per such interval (defined by an equality row), or ``k`` itself where no
    candidate term applies. Memory rows then carry one term per activation.
    """
    done = F.swap_out_done_vars.get(a)
    if not done:
        return F.keep_var[a]
    g_after = [z for g, z in done if g > c]
    p_upto = [z for q, z in F.prefetch_vars[a] if q <= c]
    if not g_after and not p_upto:
        return F.keep_var[a]
    key = (a, len(g_after), len(p_upto))
    v = F.interval_resident_var.get(key)
    if v is None:
        v = F.interval_resident_var[key] = F.var(f"y{a}_{len(g_after)}_{len(p_upto)}", "C", 0, 1)
        F.add({v: 1.0, F.keep_var[a]: -1.0, **{z: -1.0 for z in g_after + p_upto}}, 0, 0, "logic")
    return v


def existing_resident_var(F: Formulation, a: int, c: int) -> int:
    """`resident_var` of a built model (never makes one)."""
    done = F.swap_out_done_vars.get(a)
    if not done:
        return F.keep_var[a]
    ng = sum(1 for g, _ in done if g > c)
    npp = sum(1 for q, _ in F.prefetch_vars[a] if q <= c)
    return F.keep_var[a] if not ng and not npp else F.interval_resident_var[(a, ng, npp)]


def _gap_terms(F: Formulation, c: int) -> dict[int, float]:
    """Bytes of the free activations in their gap at ``c``, as residency terms."""
    p = F.problem
    free_idx = np.flatnonzero(F.free)
    terms: dict[int, float] = {}
    for a in free_idx[(p.last_fwd_use[free_idx] < c) & (c < p.first_bwd_use[free_idx])].tolist():
        v = resident_var(F, a, c)
        terms[v] = terms.get(v, 0.0) + float(p.act_bytes[a])
    return terms


def add_op_rows(F: Formulation, checks: np.ndarray, must: np.ndarray) -> None:
    """Memory while each check op runs: gap residents within what the must-hold bytes leave."""
    for c in checks.tolist():
        F.add(_gap_terms(F, c), -INF, F.budget - int(must[c]), "mem")


def add_chain_rows(F: Formulation, chain_time: dict[int, dict[int, float]], chain_hot: np.ndarray,
                   must: np.ndarray, base: np.ndarray) -> None:
    """Memory while the chains anchored at each hot op run: one row per chain and possible member."""
    p = F.problem
    nbytes = p.act_bytes.astype(np.int64)
    anchors: dict[int, list[int]] = {}
    for a in chain_time:
        anchors.setdefault(int(p.first_bwd_use[a]), []).append(a)
    for t, targets in sorted(anchors.items()):
        if not chain_hot[t]:
            continue
        targets.sort(key=lambda a: (int(p.created[a]), a))
        res = F.gap_resident_bytes_var[t] = F.var(f"RES{t}", "C", 0, float(nbytes.sum()))  # bytes at t
        F.add({res: 1.0, **{v: -w for v, w in _gap_terms(F, t).items()}}, 0, 0, "mem")
        const = int(p.fixed_bytes[t] - p.op_output_bytes[t]) + int(must[t] - base[t])
        for j, a in enumerate(targets):
            later = {F.recompute_var[b]: -float(nbytes[b]) for b in targets[j:]}  # targets not yet made
            for _, terms in _chain_member_rows(F, a):
                F.add({res: 1.0, **_merge(later, terms)}, -INF, F.budget - const, "mem")


def _merge(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def _chain_member_rows(F: Formulation, a: int) -> list[tuple[int, dict[int, float]]]:
    """For each possible member x of ``a``'s chain: the bytes held while x is made, as terms.

    Members are made in creation order; making x holds x, its intermediates, and every earlier member
    y that a member made at or after x still reads (a held-variable h >= c_y + c_z - 1 per such
    reader z). Rows for members not in the chain are implied by the next member's row (docs/ilp.md).
    """
    p = F.problem
    ch = F.chains[a]
    cv = ch.member_var
    order = sorted(ch.members, key=lambda y: (int(p.created[y]), y))
    rank = {y: i for i, y in enumerate(order)}
    readers: dict[int, list[int]] = {}
    for z in order:
        for y in p.recompute_sources[z].tolist():
            if y in rank and y != a:
                readers.setdefault(y, []).append(z)
    rows = []
    own = member_peaks(p)
    for x in order:
        terms = {cv[x]: float(own[x])}
        for y in order[:rank[x]]:
            zs = [z for z in readers.get(y, []) if rank[z] >= rank[x]]
            if not zs:
                continue
            key = (a, x, y)
            h = F.held_var.get(key)
            if h is None:
                h = F.held_var[key] = F.var(f"h{a}_{x}_{y}", "C", 0, 1)
                for z in zs:
                    F.add({cv[y]: 1.0, cv[z]: 1.0, h: -1.0}, -INF, 1, "logic")
            terms[h] = terms.get(h, 0.0) + float(p.act_bytes[y])
        rows.append((x, terms))
    return rows
