"""The largest batch size (or sequence length) at which each solver's plan fits a memory, by bisection.

Torch-free: what it means to try one size (build, capture, estimate or profile, solve, simulate,
maybe execute) is a function the caller passes in (`mutwo.run` does it for a scenario's
``search.largest_batch``). Sizes are multiples of ``step`` in [``lo``, ``hi``].

Assumption: for one solver, fitting is monotone in the size (if a plan fits at n, one fits at every
smaller n): activations grow with the batch and the fixed memory does not shrink. A solver need not
honour it exactly (a heuristic can miss at n - 1 what it found at n), so every answer's lower
neighbour is tried too, and any probe that does not fit below one that does is reported as a
warning beside the answer; the answer stays the largest size seen to fit. Its upper neighbour is
always a probe that did not fit (or the answer is ``hi``: ``capped``, "at least hi").

All solvers are searched in lockstep and share every preparation: each step tries the size most
searches ask for next, for every search it tells something, so each size is prepared about once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace

import pandas as pd

__all__ = ["Probe", "Outcome", "Bisection", "largest_fitting", "outcome_frame", "FRAME_COLUMNS", "PREDICTED",
           "MEASURED"]

PREDICTED, MEASURED = "predicted", "measured"  # a probe's basis: simulated only, or executed too


@dataclass(frozen=True)
class Probe:
    """One solver tried at one size: whether its plan fits, on what basis, and the plan's figures."""

    label: str
    n: int
    fits: bool
    basis: str = PREDICTED
    predicted_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    predicted_time_s: float | None = None
    status: str = ""
    note: str = ""
    slowdown: float | None = None  # predicted step time / keep-all's predicted step time at this size
    too_slow: bool = False  # it fits the memory but is slower than the search's max_slowdown allows

    def to_dict(self) -> dict:
        return asdict(self)

    def judged(self, max_slowdown: float | None) -> Probe:
        """This probe judged against ``max_slowdown`` (None: any time): a plan that fits the memory but
        is slower does not count. A probe made under another limit is judged again (``--resume``)."""
        in_memory = self.fits or self.too_slow
        slow = (max_slowdown is not None and in_memory and self.slowdown is not None
                and self.slowdown > max_slowdown * (1 + 1e-12))
        return replace(self, fits=in_memory and not slow, too_slow=slow)

    @classmethod
    def from_dict(cls, d: Mapping) -> Probe:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Bisection:
    """One solver's search over k in [``k_lo``, ``k_hi``] (sizes k x step): gallop up from the lowest
    (k, 2k, 4k, ...) until a size does not fit, then halve the gap between the largest fit and the
    smallest miss above it; finally try the answer's lower neighbour when it was not tried. Every k it
    asks for is one it has not seen, so it ends."""

    k_lo: int
    k_hi: int
    seen: dict[int, bool] = field(default_factory=dict)

    def record(self, k: int, fits: bool) -> None:
        self.seen[k] = fits

    @property
    def fit(self) -> int | None:
        """The largest k seen to fit."""
        return max((k for k, ok in self.seen.items() if ok), default=None)

    @property
    def miss(self) -> int | None:
        """The smallest k seen not to fit above `fit`."""
        fit = self.fit
        return min((k for k, ok in self.seen.items() if not ok and fit is not None and k > fit), default=None)

    def next(self) -> int | None:
        """The next k to try, or None when the search is over."""
        if self.k_lo not in self.seen:
            return self.k_lo
        fit, miss = self.fit, self.miss
        if fit is None:  # the smallest size does not fit
            return None
        if miss is None and fit < self.k_hi:
            return min(2 * fit, self.k_hi)
        if miss is not None and miss - fit > 1:
            return (fit + miss) // 2
        if fit - 1 >= self.k_lo and fit - 1 not in self.seen:  # the neighbour check
            return fit - 1
        return None

    def violations(self) -> list[int]:
        """The k seen not to fit below the answer: where fitting was not monotone."""
        fit = self.fit
        return sorted(k for k, ok in self.seen.items() if not ok and fit is not None and k < fit)


@dataclass
class Outcome:
    """The answer for one solver: the largest size seen to fit (None: not even the smallest), every
    probe made, whether the answer is the range's top (``capped``) and what broke monotonicity."""

    label: str
    largest: int | None
    probes: dict[int, Probe]
    capped: bool
    warning: str = ""

    @property
    def best(self) -> Probe | None:
        return self.probes.get(self.largest) if self.largest is not None else None


Judge = Callable[[int, list[str]], Mapping[str, Probe]]


def largest_fitting(labels: Iterable[str], lo: int, hi: int, judge: Judge, *, step: int = 1,
                    known: Mapping[tuple[str, int], Probe] | None = None) -> dict[str, Outcome]:
    """For each label, the largest multiple of ``step`` in [``lo``, ``hi``] that fits, by bisection in
    lockstep. ``judge(n, labels)`` tries size n for those labels (one preparation for all) and returns a
    Probe per label; ``known`` holds probes made before (a resumed run), which are not made again.

    Each step tries the size most searches ask for next (the smallest on a tie), for them and for every
    other search it tells something (it lies between that search's largest fit and smallest miss, or is
    its answer's lower neighbour), so a size is prepared once rather than once per solver."""
    known = dict(known or {})
    k_lo, k_hi = -(-lo // step), hi // step
    if k_lo > k_hi:
        raise ValueError(f"no multiple of step {step} lies in [{lo}, {hi}]")
    searches = {label: Bisection(k_lo, k_hi) for label in labels}
    probes: dict[str, dict[int, Probe]] = {label: {} for label in searches}

    def record(label: str, p: Probe) -> None:
        probes[label][p.n] = p
        searches[label].record(p.n // step, p.fits)

    for (label, n), p in sorted(known.items()):  # everything made before is evidence, whatever asked for it
        if label in searches and n % step == 0 and lo <= n <= hi:
            record(label, p)
    while True:
        wanted: dict[int, list[str]] = {}
        for label, b in searches.items():
            k = b.next()
            if k is not None:
                wanted.setdefault(k, []).append(label)
        if not wanted:
            break
        k = max(wanted, key=lambda x: (len(wanted[x]), -x))
        told = [label for label, b in searches.items() if label not in wanted[k] and _informs(b, k)]
        got = judge(k * step, wanted[k] + told)
        for label in wanted[k] + told:
            record(label, got[label])
    return {label: _outcome(label, b, probes[label], step) for label, b in searches.items()}


def _informs(b: Bisection, k: int) -> bool:
    """Whether trying k would tell search ``b`` something: it is between its largest fit and smallest
    miss, or its answer's untried lower neighbour (a search that has not started wants its lowest size)."""
    if k in b.seen or b.k_lo not in b.seen or b.fit is None:
        return False
    return b.fit < k < (b.miss if b.miss is not None else b.k_hi + 1) or k == b.fit - 1 >= b.k_lo


def _outcome(label: str, b: Bisection, probes: dict[int, Probe], step: int) -> Outcome:
    bad, largest = b.violations(), None if b.fit is None else b.fit * step
    warning = ""
    if bad:
        warning = (f"not monotone: {', '.join(str(k * step) for k in bad)} did not fit, below {largest} which "
                   f"did; the answer is the largest size seen to fit, and a size between may not fit")
    return Outcome(label, largest, dict(sorted(probes.items())), b.fit == b.k_hi, warning)


FRAME_COLUMNS = ["solver", "over", "memory", "memory_bytes", "largest", "capped", "basis", "predicted_peak_bytes",
                 "measured_peak_bytes", "predicted_time_s", "slowdown", "status", "probes", "warning", "fastest_n",
                 "fastest_time_s"]


def outcome_frame(outcomes: Mapping[str, Outcome], *, over: str, memory: str, memory_bytes: int) -> pd.DataFrame:
    """search.csv: one row per solver (its label), the answer and its plan's figures at that size, and
    every probe as ``n:yes/no`` (``n:slow``: fits, but over ``max_slowdown``; ``n:timeout`` / ``n:error`` ...: no
    answer, counted as not fitting), and the
    fitting size probed with the most work per predicted second (``fastest_n``, ``fastest_time_s``)."""
    rows = []
    for label, o in outcomes.items():
        best = o.best
        rows.append({
            "solver": label, "over": over, "memory": memory, "memory_bytes": memory_bytes, "largest": o.largest,
            "capped": o.capped, "basis": best.basis if best else None,
            "predicted_peak_bytes": best.predicted_peak_bytes if best else None,
            "measured_peak_bytes": best.measured_peak_bytes if best else None,
            "predicted_time_s": best.predicted_time_s if best else None,
            "slowdown": best.slowdown if best else None,
            "status": best.status if best else (o.probes[min(o.probes)].status if o.probes else ""),
            "probes": " ".join(f"{n}:{_verdict(p)}" for n, p in o.probes.items()),
            "warning": o.warning, **_fastest(o)})
    out = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    out["largest"] = out["largest"].astype("Int64")
    out["fastest_n"] = out["fastest_n"].astype("Int64")
    return out


def _fastest(o: Outcome) -> dict:
    """Among the sizes probed that fit, the one with the most work per predicted second (size / step time):
    the largest size is rarely the fastest to train at, and users want both. Only probed sizes count."""
    rated = [(p.n / p.predicted_time_s, p) for p in o.probes.values() if p.fits and p.predicted_time_s]
    if not rated:
        return {"fastest_n": None, "fastest_time_s": None}
    best = max(rated, key=lambda rp: (rp[0], -rp[1].n))[1]
    return {"fastest_n": best.n, "fastest_time_s": best.predicted_time_s}


NO_ANSWER = ("timeout", "error", "invalid")  # statuses where the solver said nothing about fitting


def _verdict(p: Probe) -> str:
    """``yes`` / ``no``, or the status when the solver gave no answer (a size it timed out on is not
    known not to fit: the report must not read as if it were)."""
    if p.fits:
        return "yes"
    if p.too_slow:
        return "slow"
    return p.status if p.status in NO_ANSWER else "no"
