"""From a plan to the model: its swap points as candidates, and its least full assignment.

An incumbent may carry slack in its auxiliary variables, so the reported objective is recomputed from
the decoded plan with every auxiliary variable at its least feasible value, which is the simulator's
(docs/ilp.md, Objective). The link times come from `solvers.ilp_link_walk` (mutwo.linkmodel's walks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision
from solvers.ilp_link_walk import TIME_MARGIN, copy_back_walk, static_starts, swap_out_tails
from solvers.ilp_memory import existing_resident_var

if TYPE_CHECKING:
    from solvers.ilp_model import Formulation

__all__ = ["plan_points", "complete", "summarize"]


def plan_points(problem: Problem, cum: np.ndarray, swap: np.ndarray, plan, can_s: np.ndarray
                ) -> tuple[dict[int, int], dict[int, int]]:
    """For a plan's swaps: the first op its swap-out lets run without it (FIFO link), and its prefetch."""
    if plan is None:
        return {}, {}
    p = problem
    d, pf = np.asarray(plan[0]), np.asarray(plan[1])
    sw = [int(a) for a in np.flatnonzero(d == Decision.SWAP) if can_s[a]]
    gs, ps = {}, {}
    for a, free_at in swap_out_tails(p, cum, swap, sw, sw).items():
        g = int(np.searchsorted(cum, free_at + TIME_MARGIN, side="left"))
        if g < p.n_ops and p.fwd_end < pf[a] <= p.first_bwd_use[a]:
            gs[a], ps[a] = max(g, int(p.last_fwd_use[a]) + 1), int(pf[a])
    return gs, ps


def complete(F: Formulation, d: np.ndarray, pf: np.ndarray) -> tuple[np.ndarray, str]:
    """``Formulation.complete``: the least assignment of plan ``(d, pf)``, and what keeps it outside."""
    p = F.problem
    x = np.zeros(F.n_vars)
    issues: list[str] = []
    cum = static_starts(p) / F.time_unit
    swap = p.swap_time_s / F.time_unit
    _set_decisions(F, d, x, issues)
    swapped = [a for a in F.swap_var if x[F.swap_var[a]] > 0.5]
    tails = swap_out_tails(p, cum, swap, F.swap_out_tail_var, swapped)
    for a, v in F.swap_out_tail_var.items():
        x[v] = tails[a]
    swap_out_end = {a: tails[a] for a in swapped}
    chosen = _set_swap_points(F, cum, pf, swapped, swap_out_end, x, issues)
    for (a, ng, npp), v in F.interval_resident_var.items():
        gz = [z for _, z in F.swap_out_done_vars[a]][len(F.swap_out_done_vars[a]) - ng:]
        pz = [z for _, z in F.prefetch_vars[a]][:npp]
        x[v] = x[F.keep_var[a]] + x[gz].sum() + x[pz].sum()
    _set_chains(F, x, issues)
    _set_gap_residents(F, x)
    if F.delay_var:
        _set_link_times(F, x, cum, swap, chosen, swap_out_end)
    return x, summarize(issues)


def summarize(issues: list[str], most: int = 3) -> str:
    """The first ``most`` reasons a plan lies outside the model and how many more: a start plan on a
    large Problem can have hundreds (one per chain deeper than the model's depth), and the reason ends
    up in a results row."""
    more = len(issues) - most
    return "; ".join(issues[:most]) + (f"; and {more} more" if more > 0 else "")


def _set_decisions(F: Formulation, d: np.ndarray, x: np.ndarray, issues: list[str]) -> None:
    """KEEP / RECOMPUTE / SWAP indicators; a decision the model does not offer becomes KEEP."""
    for a in range(F.problem.n_act):
        if not F.free[a]:
            if d[a] != Decision.KEEP:
                issues.append(f"activation {a} is fixed KEEP by presolve")
            continue
        code = int(d[a])
        if code == Decision.RECOMPUTE and a not in F.recompute_var:
            issues.append(f"activation {a} cannot be RECOMPUTE in the model")
            code = Decision.KEEP
        if code == Decision.SWAP and a not in F.swap_var:
            issues.append(f"activation {a} cannot be SWAP in the model")
            code = Decision.KEEP
        x[F.keep_var[a]] = code == Decision.KEEP
        if a in F.recompute_var:
            x[F.recompute_var[a]] = code == Decision.RECOMPUTE
        if a in F.swap_var:
            x[F.swap_var[a]] = code == Decision.SWAP


def _set_swap_points(F: Formulation, cum: np.ndarray, pf: np.ndarray, swapped: list[int],
                     swap_out_end: dict[int, float], x: np.ndarray, issues: list[str]) -> dict[int, int]:
    """Each swap's first swap-out candidate after it really ends, and its prefetch candidate; returns
    activation -> chosen prefetch point."""
    chosen: dict[int, int] = {}
    for a in swapped:
        done = F.swap_out_done_vars[a]
        gs = [(g, z) for g, z in done if cum[g] - TIME_MARGIN >= swap_out_end[a]]
        if gs:
            x[gs[0][1]] = 1
        else:
            issues.append(f"swap-out of {a} ends after its last candidate")
            x[done[-1][1]] = 1
        ps = [(q, z) for q, z in F.prefetch_vars[a] if q >= pf[a]]
        q, z = ps[0] if ps else F.prefetch_vars[a][-1]
        if q != pf[a]:
            issues.append(f"prefetch of {a} at {pf[a]} is not a candidate (using {q})")
        x[z] = 1
        chosen[a] = q
    return chosen


def _chain_members_on(F: Formulation, x: np.ndarray, a: int) -> set[int]:
    """Members of ``a``'s chain under the decisions in ``x``: RECOMPUTE sources reached from ``a``."""
    on = {a}
    changed = True
    while changed:
        changed = False
        for y, s in F.chains[a].edges:
            if y in on and s not in on and x[F.recompute_var[s]] > 0.5:
                on.add(s)
                changed = True
    return on


def _set_chains(F: Formulation, x: np.ndarray, issues: list[str]) -> None:
    """Chain member, shared-op and held variables at their tight values."""
    p = F.problem
    op_vars: dict[int, list[tuple[int, int]]] = {}  # target -> (op, variable); one pass, not one per target
    for (t, o), u in F.chain_op_var.items():
        op_vars.setdefault(t, []).append((o, u))
    for a, ch in F.chains.items():
        if a not in F.recompute_var or x[F.recompute_var[a]] < 0.5:
            continue
        on = _chain_members_on(F, x, a)
        for y in on - {a}:
            x[F.chain_member_var[(a, y)]] = 1
        ops_on = {int(o) for y in on for o in p.recompute_ops[y]}
        for o, u in op_vars.get(a, ()):
            if o in ops_on:
                x[u] = 1
        for y, s in ch.no_swap:
            if y in on and x[F.swap_var[s]] > 0.5:
                issues.append(f"chain of {a} needs swapped-out {s}")
        for y, s in ch.too_deep:
            if y in on and x[F.recompute_var[s]] > 0.5:
                issues.append(f"chain of {a} is deeper than the model allows")
    # y is held while xm is made when y is on and read by an on member made no earlier than xm: per
    # chain, the latest on reader of each source, found once (not once per held variable)
    latest_reader: dict[int, dict[int, tuple[int, int]]] = {}
    for (a, xm, y), h in F.held_var.items():
        cv = F.chains[a].member_var
        if a not in latest_reader:
            last: dict[int, tuple[int, int]] = {}
            for z in F.chains[a].members:
                if x[cv[z]] > 0.5:
                    for src in p.recompute_sources[z].tolist():
                        last[src] = max(last.get(src, (-1, -1)), (int(p.created[z]), z))
            latest_reader[a] = last
        x[h] = float(x[cv[y]] > 0.5 and latest_reader[a].get(y, (-1, -1)) >= (int(p.created[xm]), xm))


def _set_gap_residents(F: Formulation, x: np.ndarray) -> None:
    """Bytes of gap-resident activations at each chain anchor."""
    p = F.problem
    for c, res in F.gap_resident_bytes_var.items():
        total = 0.0
        for a in np.flatnonzero(F.free).tolist():
            if p.last_fwd_use[a] < c < p.first_bwd_use[a]:
                total += float(p.act_bytes[a]) * x[existing_resident_var(F, a, c)]
        x[res] = total


def _chain_units(F: Formulation, x: np.ndarray, a: int) -> float:
    """Chain time of target ``a`` in time units, from the chain variables already set in ``x``."""
    p = F.problem
    members = [y for y in F.chains[a].members if y == a or x[F.chain_member_var[(a, y)]] > 0.5]
    ops = np.unique(np.concatenate([p.recompute_ops[y] for y in members]))
    return float(p.op_time_s[ops].sum()) / F.time_unit


def _set_link_times(F: Formulation, x: np.ndarray, cum: np.ndarray, swap: np.ndarray, chosen: dict[int, int],
                    swap_out_end: dict[int, float]) -> None:
    """Copy-back queue tails, delays and stalls, from the link walk of the plan (chains anchored at
    their targets' first backward use, as in the model)."""
    p = F.problem
    recompute = np.zeros(p.n_ops)
    for a in sorted(F.recompute_var):
        if x[F.recompute_var[a]] > 0.5 and a in F.chains:
            recompute[p.first_bwd_use[a]] += _chain_units(F, x, a)
    copies = [(q, a) for q, a, _ in F.copy_back_tail_vars]
    walk = copy_back_walk(p, cum, swap, copies, chosen, swap_out_end, recompute)
    for (_, _, h), tail in zip(F.copy_back_tail_vars, walk.tails, strict=True):
        x[h] = tail
    for t, v in F.delay_var.items():
        x[v] = walk.delay[t]
    for t, v in F.stall_var.items():
        x[v] = walk.stall[t]
