"""Schedule: a solver's answer — a decision per activation — and the rules that make it valid.

The recompute chain rule lives here (``resolve_recompute``) because three places need exactly the same
answer: ``validate``, the simulator and the executor.

Recompute rule
    A RECOMPUTE activation ``a`` is regenerated just before its *anchor* ``t``: its first backward use,
    or the earlier backward op ``recompute_at[a]`` when the schedule sets one, and it stays resident from
    ``t`` to its last backward use. Each of its ``recompute_sources`` ``s`` must then be *resident*: KEEP,
    or already brought back (RECOMPUTE with ``anchor[s] <= t <= last_bwd_use[s]``, anchors at the same op
    being served in creation order; SWAP with ``first_bwd_use[s] <= t <= last_bwd_use[s]``). A RECOMPUTE
    source that is not resident is recomputed too, as a temporary of ``a``'s chain (recursively); each
    op of the chain runs once. A SWAP source that is not resident makes the schedule invalid.

    Early anchors are how a segment is regenerated once and shared (Chen et al.'s checkpointing): give
    every member of a run of recomputed activations the first backward use of any of them as its
    anchor, and each member's chain is just its own ops, reading the members made before it. Without
    them, every member regenerates the run from the last kept activation on its own, which costs
    quadratic time and the least memory.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mutwo.problem import Problem

__all__ = ["Decision", "Status", "Schedule", "ScheduleError", "RecomputeChain", "resolve_recompute",
           "recompute_chain", "recompute_anchors", "anchor_cost", "chain_peak", "member_peaks", "member_transients",
           "default_prefetch", "latest_hiding_points", "check_points", "validate"]


class Decision(enum.IntEnum):
    KEEP = 0
    RECOMPUTE = 1
    SWAP = 2


_KEEP, _RECOMPUTE = int(Decision.KEEP), int(Decision.RECOMPUTE)  # plain ints for the chain walk's loop


class Status(str, enum.Enum):
    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"
    TIMEOUT = "timeout"
    ERROR = "error"
    INVALID = "invalid"


class ScheduleError(ValueError):
    """An invalid schedule; the message names the activation."""


@dataclass
class RecomputeChain:
    """How one RECOMPUTE activation is regenerated at its anchor (its first backward use, or the earlier
    ``recompute_at`` the schedule sets)."""

    target: int
    anchor: int
    ops: np.ndarray  # forward op positions re-run, ascending, each once
    temporaries: list[int]  # other RECOMPUTE activations regenerated only for this chain
    sources: list[int]  # resident activations the chain reads
    time_s: float
    peak_bytes: int  # most bytes the chain holds at once while it runs, its target included


@dataclass
class Schedule:
    """A decision per activation plus provenance. JSON-serialisable."""

    decisions: np.ndarray  # int8 [n_act] of Decision
    prefetch_at: np.ndarray  # int64 [n_act]: op position where a SWAP's copy back starts, -1 otherwise
    solver: str = "unknown"
    status: Status = Status.FEASIBLE
    budget_bytes: int | None = None
    solve_time_s: float = 0.0
    options: dict = field(default_factory=dict)
    objective: float | None = None  # solver's own estimate of the iteration time (s), if it has one
    bound: float | None = None  # best proven lower bound on that objective, if any
    message: str = ""
    recompute_sources: dict[int, list[int]] = field(default_factory=dict)  # filled by `explain`
    # int64 [n_act]: backward op before which a RECOMPUTE activation is regenerated when earlier than its
    # first backward use (a shared segment, see the module doc); -1: at its first backward use
    recompute_at: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.decisions = np.asarray(self.decisions, dtype=np.int8)
        self.prefetch_at = np.asarray(self.prefetch_at, dtype=np.int64)
        self.recompute_at = (np.full(len(self.decisions), -1, np.int64) if self.recompute_at is None
                             else np.asarray(self.recompute_at, dtype=np.int64))
        self.status = Status(self.status)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def keep_all(cls, problem: Problem, **kw) -> Schedule:
        return cls(np.zeros(problem.n_act, np.int8), np.full(problem.n_act, -1, np.int64), **kw)

    @classmethod
    def from_decisions(cls, problem: Problem, decisions, prefetch_at=None, recompute_at=None, **kw) -> Schedule:
        """Build a schedule, filling SWAP prefetch points that are not given with `default_prefetch`
        (recompute points not given stay at the first backward use)."""
        decisions = np.asarray(decisions, dtype=np.int8)
        pf = np.full(problem.n_act, -1, np.int64) if prefetch_at is None else np.asarray(prefetch_at, np.int64)
        swaps = np.flatnonzero(decisions == Decision.SWAP)
        missing = swaps[pf[swaps] < 0]
        pf = pf.copy()
        pf[missing] = default_prefetch(problem)[missing]
        pf[decisions != Decision.SWAP] = -1
        ra = np.full(problem.n_act, -1, np.int64) if recompute_at is None else np.array(recompute_at, np.int64)
        ra[decisions != Decision.RECOMPUTE] = -1
        return cls(decisions, pf, recompute_at=ra, **kw)

    @classmethod
    def infeasible(cls, problem: Problem, solver: str, budget_bytes: int, message: str, **kw) -> Schedule:
        return cls.keep_all(problem, solver=solver, status=Status.INFEASIBLE, budget_bytes=budget_bytes,
                            message=message, **kw)

    # ------------------------------------------------------------------ queries
    @property
    def feasible(self) -> bool:
        return self.status in (Status.OPTIMAL, Status.FEASIBLE)

    def counts(self) -> dict[str, int]:
        return {f"n_{d.name.lower()}": int((self.decisions == d).sum()) for d in Decision}

    def plan_key(self) -> bytes:
        """Identical keys give identical rewritten graphs (decisions, prefetch and recompute points), so
        a plan that several solvers return is executed once."""
        return (np.asarray(self.decisions, np.int8).tobytes() + np.asarray(self.prefetch_at, np.int64).tobytes()
                + np.asarray(self.recompute_at, np.int64).tobytes())

    def explain(self, problem: Problem) -> Schedule:
        """Record each recomputed activation's resident sources (for humans reading the JSON)."""
        chains = resolve_recompute(problem, self.decisions, self.recompute_at)
        self.recompute_sources = {a: c.sources for a, c in chains.items()}
        return self

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        d["decisions"] = [Decision(int(x)).name for x in self.decisions]
        d["prefetch_at"] = self.prefetch_at.tolist()
        d["recompute_at"] = self.recompute_at.tolist()
        d["status"] = self.status.value
        d["recompute_sources"] = {str(k): [int(s) for s in v] for k, v in self.recompute_sources.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        d = dict(d)
        d["decisions"] = np.array([Decision[x] for x in d["decisions"]], dtype=np.int8)
        d["prefetch_at"] = np.array(d["prefetch_at"], dtype=np.int64)
        if d.get("recompute_at") is not None:  # absent in schedules written before it existed
            d["recompute_at"] = np.array(d["recompute_at"], dtype=np.int64)
        d["recompute_sources"] = {int(k): list(v) for k, v in d.get("recompute_sources", {}).items()}
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        from mutwo.files import write_text

        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        return cls.from_json(Path(path).read_text())


# ---------------------------------------------------------------------- shared rules
def recompute_anchors(problem: Problem, decisions: np.ndarray, recompute_at: np.ndarray | None = None) -> np.ndarray:
    """The op before which each RECOMPUTE activation is regenerated (``recompute_at`` where set, else its
    first backward use); -1 for the others."""
    dec = np.asarray(decisions)
    at = problem.first_bwd_use.copy()
    if recompute_at is not None:
        ra = np.asarray(recompute_at, np.int64)
        at = np.where(ra >= 0, ra, at)
    return np.where(dec == Decision.RECOMPUTE, at, -1).astype(np.int64)


def resolve_recompute(problem: Problem, decisions: np.ndarray,
                      recompute_at: np.ndarray | None = None) -> dict[int, RecomputeChain]:
    """Expand every RECOMPUTE activation into the chain of ops that regenerates it at its anchor (see
    the module doc). Raises ScheduleError when a chain would need a SWAP source that is not resident."""
    dec = np.asarray(decisions).tolist()
    back = problem.first_bwd_use.tolist()  # where each activation is back for backward: its anchor if recomputed
    if recompute_at is not None:
        at = recompute_anchors(problem, np.asarray(dec, np.int64), recompute_at)
        back = np.where(at >= 0, at, problem.first_bwd_use).tolist()
    recompute = int(Decision.RECOMPUTE)
    sources_of, last = _as_lists(problem, "recompute_sources", "last_bwd_use")
    return {a: _chain(problem, a, dec, back, sources_of, last) for a, d in enumerate(dec) if d == recompute}


def recompute_chain(problem: Problem, target: int, decisions: list[int], back: list[int]) -> RecomputeChain:
    """The chain that regenerates ``target`` at ``back[target]``, as if it were RECOMPUTE, under
    ``decisions`` (the rule in the module doc).

    ``back[x]`` is the op from which ``x`` is on the device again for backward: its anchor if it is
    recomputed, else its first backward use. Both are Python lists: solvers call this in loops, and a
    numpy scalar comparison costs ~50x more per element. Raises ScheduleError when the chain would
    need a SWAP source that is not resident then.
    """
    return _chain(problem, target, decisions, back, *_as_lists(problem, "recompute_sources", "last_bwd_use"))


def _chain(problem: Problem, target: int, decisions: list[int], back: list[int], sources_of: list[list[int]],
           last: list[int]) -> RecomputeChain:
    keep, recompute = _KEEP, _RECOMPUTE
    t = back[target]
    op_parts, temporaries, sources = [], [], []
    seen = {target}
    stack = [target]
    while stack:
        x = stack.pop()
        op_parts.append(problem.recompute_ops[x])
        for s in sources_of[x]:
            if s in seen:
                continue
            seen.add(s)
            if decisions[s] == keep or back[s] <= t <= last[s]:
                sources.append(s)
            elif decisions[s] == recompute:
                temporaries.append(s)
                stack.append(s)
            else:
                raise ScheduleError(
                    f"activation {problem.act_names[target]!r} (index {target}) is recomputed at op {t} from "
                    f"{problem.act_names[s]!r} (index {s}), which is swapped out then; keep it, or "
                    f"recompute it instead")
    ops = op_parts[0] if len(op_parts) == 1 else np.unique(np.concatenate(op_parts))
    return RecomputeChain(target, t, ops, sorted(temporaries), sorted(sources), float(problem.op_time_s[ops].sum()),
                          chain_peak(problem, target, temporaries, ops))


def _as_lists(problem: Problem, *names: str) -> list[list]:
    """Problem arrays as Python lists (solvers' inner loops index them one element at a time, where a
    numpy scalar costs ~50x more), cached on the Problem for as long as it holds the same arrays."""
    cache = problem.__dict__.setdefault("_as_lists", {})
    out = []
    for name in names:
        array = getattr(problem, name)
        hit = cache.get(name)
        if hit is None or hit[0] is not array:
            hit = cache[name] = (array, [x.tolist() for x in array] if isinstance(array, list) else array.tolist())
        out.append(hit[1])
    return out


def anchor_cost(problem: Problem, anchor: int, chains: Iterable[RecomputeChain]) -> tuple[float, int]:
    """What the chains anchored at op ``anchor`` cost there: their time, and how many bytes more than
    the op's own memory they hold at their most (negative: fewer).

    The second is ``chain_memory(t) - op_memory(t)`` of docs/cost_model.md: both count the fixed and
    resident bytes, so the difference depends on these chains alone (chains run in their targets'
    creation order, each on top of the targets before it, before the op allocates its outputs and
    workspace). Times are summed in target index order, one float addition each.
    """
    group = list(chains)
    several = len(group) > 1  # most anchors have one chain: no sorting then (simulate's inner loop)
    if several:
        group.sort(key=lambda c: c.target)
    time_s = 0.0
    for c in group:
        time_s += c.time_s
    if several:
        created = _as_lists(problem, "created")[0]
        group.sort(key=lambda c: (created[c.target], c.target))
    done = most = 0
    for c in group:
        most = max(most, done + c.peak_bytes)
        done += int(problem.act_bytes[c.target])
    return time_s, most - done - int(problem.op_output_bytes[anchor]) - int(problem.op_transient_bytes[anchor])


def chain_peak(problem: Problem, target: int, temporaries: list[int], ops: np.ndarray | None = None) -> int:
    """Most bytes a chain holds at once, its target included (its resident sources are counted
    elsewhere).

    With the Problem's forward dataflow, op by op as the executor runs it: the chain's ops (``ops``, or
    the union of its members' recompute ops) run in position order, each allocating the values it makes
    on top of what is held, plus its in-kernel scratch (``op_transient_bytes``) while it runs, and every
    value but the target is freed after its last reader in the chain. Without it, member by member:
    members run in creation order; each holds all of its intermediates (``recompute_temp_bytes``) and
    the largest scratch of its ops (`member_transients`) while it is made; a temporary is freed after
    the last member that reads it.
    """
    if problem.has_dataflow:
        if ops is None:
            ops = np.unique(np.concatenate([problem.recompute_ops[x] for x in [target, *temporaries]]))
        return _chain_peak_ops(problem, int(problem.act_value[target]), ops)
    scratch = member_transients(problem)
    if not temporaries:
        return int(problem.act_bytes[target] + problem.recompute_temp_bytes[target]) + scratch[target]
    members = sorted([*temporaries, target], key=lambda x: (int(problem.created[x]), x))
    rank = {x: i for i, x in enumerate(members)}
    last_reader = {x: (len(members) if x == target else rank[x]) for x in members}
    for x in members:
        for s in problem.recompute_sources[x].tolist():
            if s in rank and s != target:
                last_reader[s] = max(last_reader[s], rank[x])
    nbytes, temp = problem.act_bytes, problem.recompute_temp_bytes
    held = peak = 0
    freed_after: dict[int, int] = {}
    for i, x in enumerate(members):
        peak = max(peak, held + int(nbytes[x]) + int(temp[x]) + scratch[x])
        held += int(nbytes[x])
        freed_after[last_reader[x]] = freed_after.get(last_reader[x], 0) + int(nbytes[x])
        held -= freed_after.pop(i, 0)
    return peak


def member_peaks(problem: Problem) -> np.ndarray:
    """Most bytes regenerating each activation alone holds, itself included (its sources held outside):
    op by op through the forward dataflow when the Problem has it, else all of its intermediates at
    once (``act_bytes + recompute_temp_bytes``); in-kernel scratch included either way (`chain_peak`).
    The per-member term of the member rule, which the ILP formulations use: members held whole plus
    this term is still at least what a chain holds op by op (except where members share an op), so
    their memory rows stay conservative, and tighter."""
    if not problem.has_dataflow:
        return problem.act_bytes + problem.recompute_temp_bytes + np.asarray(member_transients(problem), np.int64)
    cached = problem.__dict__.get("_member_peaks")
    if cached is None or cached[0] is not problem.op_transient_bytes:
        cached = np.array([_chain_peak_ops(problem, int(problem.act_value[a]), problem.recompute_ops[a])
                           if len(problem.recompute_ops[a]) else int(problem.act_bytes[a])
                           for a in range(problem.n_act)], dtype=np.int64)
        cached = problem.__dict__["_member_peaks"] = (problem.op_transient_bytes, cached)
    return cached[1]


def member_transients(problem: Problem) -> list[int]:
    """Per activation, the largest in-kernel scratch (``op_transient_bytes``) among its recompute ops
    (0 without ops): what the member rule adds while the member is made (docs/cost_model.md). A list,
    cached on the Problem for as long as it holds the same transient array."""
    transient = problem.op_transient_bytes
    hit = problem.__dict__.get("_member_transients")
    if hit is None or hit[0] is not transient:
        per_op = transient.tolist()
        hit = problem.__dict__["_member_transients"] = (
            transient, [max((per_op[t] for t in ops.tolist()), default=0) for ops in problem.recompute_ops])
    return hit[1]


def _dataflow_lists(problem: Problem) -> tuple[list[int], list[int], list[int], list[int]]:
    """The dataflow as Python lists (chain_peak runs in solvers' inner loops), cached on the Problem:
    where each forward op's made values start, where its reads start, the reads, the value sizes."""
    cached = problem.__dict__.get("_dataflow_lists")
    if cached is None:
        makes = np.searchsorted(problem.value_op, np.arange(problem.fwd_end + 2), side="left")
        cached = (makes.tolist(), problem.reads_offsets.tolist(), problem.reads.tolist(),
                  problem.value_bytes.tolist())
        problem.__dict__["_dataflow_lists"] = cached
    return cached


def _chain_peak_ops(problem: Problem, target_value: int, ops: np.ndarray) -> int:
    """Op by op: each op's made values join what is held, its scratch sits on top while it runs."""
    makes, reads_off, reads, nbytes = _dataflow_lists(problem)
    scratch = _as_lists(problem, "op_transient_bytes")[0]
    order = ops.tolist()
    last_reader: dict[int, int] = {}
    for k, op in enumerate(order):
        for v in reads[reads_off[op]:reads_off[op + 1]]:
            last_reader[v] = k
    held = peak = 0
    freed_after: dict[int, int] = {}
    for k, op in enumerate(order):
        made = range(makes[op], makes[op + 1])
        for v in made:
            held += nbytes[v]
        peak = max(peak, held + scratch[op])
        for v in made:
            if v != target_value:
                end = max(last_reader.get(v, k), k)
                freed_after[end] = freed_after.get(end, 0) + nbytes[v]
        held -= freed_after.pop(k, 0)
    return peak


def default_prefetch(problem: Problem) -> np.ndarray:
    """For every activation, the latest backward op at which starting the copy back still hides it
    behind profiled compute (``latest_hiding_points`` with no recompute time in backward). Ignores
    link contention (the simulator accounts for that)."""
    reached = np.concatenate([[0.0], np.cumsum(problem.op_time_s)[:-1]])  # when op t is reached
    return latest_hiding_points(reached, problem.first_bwd_use, problem.swap_time_s, problem.fwd_end)


def latest_hiding_points(reached_s: np.ndarray, first_bwd_use: np.ndarray, transfer_s: np.ndarray,
                         fwd_end: int) -> np.ndarray:
    """Per activation, the latest op whose start leaves ``transfer_s`` seconds before its first
    backward use is reached (``reached_s[t]``: when op ``t`` is reached); never before the first
    backward op, never after the first backward use.

    Walks back from the first backward use until the time in between covers the transfer. Solvers
    that put recompute time in backward pass times that count it (μ-TWO's Algorithm C).
    """
    need = reached_s[first_bwd_use] - transfer_s
    t = np.searchsorted(reached_s, need, side="right") - 1  # latest t with reached_s[t] <= need
    return np.clip(t, fwd_end + 1, first_bwd_use).astype(np.int64)


def check_points(problem: Problem, schedule: Schedule) -> None:
    """Each SWAP's prefetch point, and each RECOMPUTE's recompute point where set, lies in the backward
    pass and no later than the activation's first backward use (what `simulate` needs to price them;
    it calls this too). Assumes one decision and one point of each kind per activation."""
    d = np.asarray(schedule.decisions)
    for code, points, verb, unset in ((Decision.SWAP, schedule.prefetch_at, "prefetched", False),
                                      (Decision.RECOMPUTE, schedule.recompute_at, "recomputed", True)):
        given = (d == code) & ((points >= 0) if unset else True)
        bad = np.flatnonzero(given & ((points <= problem.fwd_end) | (points > problem.first_bwd_use)))
        if len(bad):
            a = int(bad[0])
            raise ScheduleError(
                f"activation {problem.act_names[a]!r} (index {a}) is {verb} at op {points[a]}, which must lie "
                f"in the backward pass and no later than its first backward use {problem.first_bwd_use[a]}")


def validate(problem: Problem, schedule: Schedule) -> None:
    """Raise ScheduleError (naming the activation) unless the schedule can be simulated and executed."""
    d = schedule.decisions
    if len(d) != problem.n_act:
        raise ScheduleError(f"schedule has {len(d)} decisions for {problem.n_act} activations: every "
                            f"activation needs exactly one")
    for points, kind in ((schedule.prefetch_at, "prefetch"), (schedule.recompute_at, "recompute")):
        if len(points) != problem.n_act:
            raise ScheduleError(f"schedule has {len(points)} {kind} points for {problem.n_act} activations")
    bad = np.flatnonzero(~np.isin(d, [int(x) for x in Decision]))
    if len(bad):
        a = int(bad[0])
        raise ScheduleError(f"activation {problem.act_names[a]!r} (index {a}) is undecided "
                            f"(decision code {int(d[a])}); use KEEP, RECOMPUTE or SWAP")
    for code, allowed, verb in ((Decision.RECOMPUTE, problem.recomputable, "recomputed"),
                                (Decision.SWAP, problem.swappable, "swapped")):
        bad = np.flatnonzero((d == code) & ~allowed)
        if len(bad):
            a = int(bad[0])
            raise ScheduleError(f"activation {problem.act_names[a]!r} (index {a}) may not be {verb}")
    ra = schedule.recompute_at
    bad = np.flatnonzero((ra >= 0) & (d != Decision.RECOMPUTE))
    if len(bad):
        a = int(bad[0])
        raise ScheduleError(f"activation {problem.act_names[a]!r} (index {a}) has recompute_at {ra[a]} but is "
                            f"{Decision(int(d[a])).name}; only RECOMPUTE activations take one (-1 otherwise)")
    check_points(problem, schedule)
    resolve_recompute(problem, d, ra)
