"""The Problem: everything a solver may know about one training iteration, as plain data.

Solvers never see torch objects. A Problem is built from a captured TrainGraph and its Profile
(`mutwo.problem_build.build_problem`, which returns it with the storage binding the executor needs), or
by a synthetic generator (`mutwo.synthetic`), and can be saved to / loaded from disk (one ``.npz``
file), so a solver can be written and tested without torch.

Positions
    Ops are numbered ``0 .. n_ops-1`` in execution order. Ops ``0 .. fwd_end`` are the forward pass
    (loss included); ops after ``fwd_end`` are backward and the optimizer step.

Memory model (see ``docs/cost_model.md``; ``mutwo.simulate`` is its only implementation)
    Memory while op ``t`` runs = ``fixed_bytes[t]`` (every tensor that is *not* a decidable activation:
    parameters, gradients, optimizer state, forward temporaries, backward temporaries, inputs)
    + the bytes of every activation resident at ``t`` + ``op_transient_bytes[t]`` (workspace the op
    needs beyond its inputs and outputs) + recompute temporaries at ``t``.

Activations
    A tensor storage made in forward and read again in backward. Its keep-all live range is
    ``[created, last_bwd_use]``. Recomputing it re-runs ``recompute_ops[a]`` (forward op positions, its
    producer included), which read only ``recompute_sources[a]`` (other activations) and tensors that
    are always available (parameters, inputs, buffers). Non-activation intermediates of that chain add
    ``recompute_temp_bytes[a]`` while the recompute runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Problem", "ProblemError"]


class ProblemError(ValueError):
    """A Problem whose arrays are inconsistent; the message names the field."""


def _csr(lists: list[list[int]] | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if lists else np.zeros(0, np.int64)
    return offsets, flat.astype(np.int64)


def _uncsr(offsets: np.ndarray, flat: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


@dataclass
class Problem:
    """Plain-data description of one training iteration's memory decisions.

    All per-op arrays have length ``n_ops``; all per-activation arrays have length ``n_act``.
    Times are seconds, sizes bytes.
    """

    name: str
    # --- per op -----------------------------------------------------------------------------
    op_names: list[str]
    op_time_s: np.ndarray  # float64 [n_ops]
    op_transient_bytes: np.ndarray  # int64 [n_ops]
    fixed_bytes: np.ndarray  # int64 [n_ops]
    fwd_end: int  # last forward op position (the loss / boundary)
    # --- per activation -----------------------------------------------------------------------
    act_names: list[str]
    act_bytes: np.ndarray  # int64 [n_act]
    created: np.ndarray  # int64 [n_act]: op position that creates it (<= fwd_end)
    last_fwd_use: np.ndarray  # int64 [n_act]: last forward reader (>= created)
    first_bwd_use: np.ndarray  # int64 [n_act]: first backward reader (> fwd_end)
    last_bwd_use: np.ndarray  # int64 [n_act]: last backward reader (>= first_bwd_use)
    recomputable: np.ndarray  # bool [n_act]: False for random ops, in-place hazards, ...
    swappable: np.ndarray  # bool [n_act]
    recompute_ops: list[np.ndarray]  # per activation: forward op positions to re-run (ascending)
    recompute_sources: list[np.ndarray]  # per activation: activation indices those ops read
    recompute_temp_bytes: np.ndarray  # int64 [n_act]: non-activation intermediates of the chain
    # --- device -----------------------------------------------------------------------------
    host_bandwidth_bytes_per_s: float = 12e9  # one link per direction (device->host, host->device)
    device: str = "cpu"
    notes: dict = field(default_factory=dict)  # free-form provenance (model, batch, versions)
    # where op_time_s comes from: "measured:cpu", "measured:cuda:<GPU name>" or "estimated:<target>"
    # (a prediction for a device that did not run it); "" means measured on ``device``
    cost_source: str = ""
    # bytes op t allocates for its outputs (in fixed_bytes[t], not yet allocated while recompute chains
    # anchored at t run); zeros when unknown, which only makes chain memory more conservative
    op_output_bytes: np.ndarray | None = None
    # --- forward dataflow, optional: what recompute chains hold op by op --------------------------
    # Every storage made in forward is a *value*. With these, a chain's memory is followed op by op as
    # the executor's generated code frees it (each value after its last reader in the chain); without
    # them (synthetic Problems) chain members are held whole (``mutwo.schedule.chain_peak``).
    value_bytes: np.ndarray | None = None  # int64 [n_values]
    value_op: np.ndarray | None = None  # int64 [n_values]: forward op that makes it (non-decreasing)
    reads_offsets: np.ndarray | None = None  # int64 [fwd_end + 2]: CSR over forward ops into ``reads``
    reads: np.ndarray | None = None  # int64: values each forward op reads (through views)
    act_value: np.ndarray | None = None  # int64 [n_act]: the value of each activation

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.op_time_s = np.asarray(self.op_time_s, dtype=np.float64)
        self.cost_source = self.cost_source or f"measured:{self.device}"
        if self.op_output_bytes is None:
            self.op_output_bytes = np.zeros(len(self.op_time_s), dtype=np.int64)
        for name in ("op_transient_bytes", "fixed_bytes", "op_output_bytes", "act_bytes", "created", "last_fwd_use",
                     "first_bwd_use", "last_bwd_use", "recompute_temp_bytes"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        self.recomputable = np.asarray(self.recomputable, dtype=bool)
        self.swappable = np.asarray(self.swappable, dtype=bool)
        self.recompute_ops = [np.asarray(x, dtype=np.int64) for x in self.recompute_ops]
        self.recompute_sources = [np.asarray(x, dtype=np.int64) for x in self.recompute_sources]
        self.op_names = list(self.op_names)
        self.act_names = list(self.act_names)
        for name in self._DATAFLOW:
            if getattr(self, name) is not None:
                setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        self.check()

    _DATAFLOW = ("value_bytes", "value_op", "reads_offsets", "reads", "act_value")

    @property
    def has_dataflow(self) -> bool:
        """Whether chain memory can be followed op by op (see the dataflow fields)."""
        return self.value_bytes is not None

    @property
    def n_ops(self) -> int:
        return len(self.op_time_s)

    @property
    def n_act(self) -> int:
        return len(self.act_bytes)

    @property
    def swap_time_s(self) -> np.ndarray:
        """Time to move each activation across the host link, one direction."""
        return self.act_bytes / float(self.host_bandwidth_bytes_per_s)

    @property
    def recompute_time_s(self) -> np.ndarray:
        """Time of each activation's own recompute ops (sources assumed available)."""
        return np.array([self.op_time_s[ops].sum() for ops in self.recompute_ops], dtype=np.float64)

    @property
    def total_compute_s(self) -> float:
        return float(self.op_time_s.sum())

    # ------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ProblemError naming the first inconsistent field."""
        n, m = self.n_ops, self.n_act
        per_op = {"op_names": len(self.op_names), "op_transient_bytes": len(self.op_transient_bytes),
                  "fixed_bytes": len(self.fixed_bytes), "op_output_bytes": len(self.op_output_bytes)}
        for key, length in per_op.items():
            if length != n:
                raise ProblemError(f"Problem.{key} has length {length}, expected n_ops={n}")
        per_act = {"act_names": len(self.act_names), "created": len(self.created),
                   "last_fwd_use": len(self.last_fwd_use), "first_bwd_use": len(self.first_bwd_use),
                   "last_bwd_use": len(self.last_bwd_use), "recomputable": len(self.recomputable),
                   "swappable": len(self.swappable), "recompute_ops": len(self.recompute_ops),
                   "recompute_sources": len(self.recompute_sources),
                   "recompute_temp_bytes": len(self.recompute_temp_bytes)}
        for key, length in per_act.items():
            if length != m:
                raise ProblemError(f"Problem.{key} has length {length}, expected n_act={m}")
        if not 0 <= self.fwd_end < n:
            raise ProblemError(f"Problem.fwd_end={self.fwd_end} is outside 0..{n - 1}")
        if np.any(self.op_time_s < 0):
            raise ProblemError("Problem.op_time_s has negative entries")
        if np.any(self.act_bytes < 0) or np.any(self.fixed_bytes < 0):
            raise ProblemError("Problem.act_bytes / fixed_bytes have negative entries")
        if np.any(self.op_output_bytes < 0) or np.any(self.op_output_bytes > self.fixed_bytes):
            raise ProblemError("Problem.op_output_bytes must lie between 0 and fixed_bytes (outputs are "
                               "part of the fixed memory of their op)")
        if self.host_bandwidth_bytes_per_s <= 0:
            raise ProblemError("Problem.host_bandwidth_bytes_per_s must be positive")
        bad = np.flatnonzero(~((self.created <= self.last_fwd_use) & (self.last_fwd_use <= self.fwd_end)
                               & (self.fwd_end < self.first_bwd_use)
                               & (self.first_bwd_use <= self.last_bwd_use) & (self.last_bwd_use < n)))
        if len(bad):
            a = int(bad[0])
            raise ProblemError(
                f"activation {self.act_names[a]!r} (index {a}) needs created <= last_fwd_use <= fwd_end < "
                f"first_bwd_use <= last_bwd_use < n_ops; got {self.created[a]}, {self.last_fwd_use[a]}, "
                f"{self.fwd_end}, {self.first_bwd_use[a]}, {self.last_bwd_use[a]}, {n}")
        self._check_dataflow()
        for a in range(m):
            ops, srcs = self.recompute_ops[a], self.recompute_sources[a]
            if self.recomputable[a] and (len(ops) == 0 or ops.max() > self.fwd_end or ops.min() < 0):
                raise ProblemError(f"activation {self.act_names[a]!r}: recompute_ops must be forward ops")
            if len(ops) > 1 and np.any(np.diff(ops) <= 0):
                raise ProblemError(f"activation {self.act_names[a]!r}: recompute_ops must be strictly ascending")
            if len(srcs) and (srcs.min() < 0 or srcs.max() >= m or np.any(srcs == a)):
                raise ProblemError(f"activation {self.act_names[a]!r}: recompute_sources out of range")
            if len(srcs) and np.any(self.created[srcs] >= self.created[a]):
                raise ProblemError(
                    f"activation {self.act_names[a]!r}: a recompute source is created after it")

    def _check_dataflow(self) -> None:
        given = [name for name in self._DATAFLOW if getattr(self, name) is not None]
        if not given:
            return
        if len(given) != len(self._DATAFLOW):
            missing = sorted(set(self._DATAFLOW) - set(given))
            raise ProblemError(f"Problem dataflow fields come together: {given} given, {missing} missing")
        nv = len(self.value_bytes)
        if len(self.value_op) != nv or np.any(self.value_bytes < 0):
            raise ProblemError("Problem.value_op must have one entry per value and value_bytes be >= 0")
        if nv and (np.any(np.diff(self.value_op) < 0) or self.value_op.min() < 0
                   or self.value_op.max() > self.fwd_end):
            raise ProblemError("Problem.value_op must be non-decreasing forward op positions")
        off = self.reads_offsets
        if len(off) != self.fwd_end + 2 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != len(self.reads):
            raise ProblemError(f"Problem.reads_offsets must be a CSR offset array of length fwd_end + 2 = "
                               f"{self.fwd_end + 2} ending at len(reads)")
        if len(self.reads) and (self.reads.min() < 0 or self.reads.max() >= nv):
            raise ProblemError("Problem.reads holds value ids out of range")
        if len(self.act_value) != self.n_act or (self.n_act and (self.act_value.min() < 0
                                                                  or self.act_value.max() >= nv)):
            raise ProblemError(f"Problem.act_value needs one value id per activation (n_act={self.n_act})")

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` (atomically: temp file, then rename)."""
        path = Path(path)
        ro_off, ro_flat = _csr(self.recompute_ops)
        rs_off, rs_flat = _csr(self.recompute_sources)
        meta = {"name": self.name, "fwd_end": self.fwd_end, "device": self.device, "cost_source": self.cost_source,
                "host_bandwidth_bytes_per_s": self.host_bandwidth_bytes_per_s, "notes": self.notes,
                "op_names": self.op_names, "act_names": self.act_names}
        from mutwo.files import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez_compressed(
                f, meta=np.array(json.dumps(meta)), op_time_s=self.op_time_s,
                op_transient_bytes=self.op_transient_bytes, fixed_bytes=self.fixed_bytes,
                act_bytes=self.act_bytes, created=self.created, last_fwd_use=self.last_fwd_use,
                first_bwd_use=self.first_bwd_use, last_bwd_use=self.last_bwd_use,
                recomputable=self.recomputable, swappable=self.swappable, ro_off=ro_off, ro_flat=ro_flat,
                rs_off=rs_off, rs_flat=rs_flat, recompute_temp_bytes=self.recompute_temp_bytes,
                op_output_bytes=self.op_output_bytes,
                **{k: getattr(self, k) for k in self._DATAFLOW if getattr(self, k) is not None})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Problem:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                name=meta["name"], op_names=meta["op_names"], op_time_s=z["op_time_s"],
                op_transient_bytes=z["op_transient_bytes"], fixed_bytes=z["fixed_bytes"],
                fwd_end=int(meta["fwd_end"]), act_names=meta["act_names"], act_bytes=z["act_bytes"],
                created=z["created"], last_fwd_use=z["last_fwd_use"], first_bwd_use=z["first_bwd_use"],
                last_bwd_use=z["last_bwd_use"], recomputable=z["recomputable"], swappable=z["swappable"],
                recompute_ops=_uncsr(z["ro_off"], z["ro_flat"]),
                recompute_sources=_uncsr(z["rs_off"], z["rs_flat"]),
                recompute_temp_bytes=z["recompute_temp_bytes"],
                host_bandwidth_bytes_per_s=float(meta["host_bandwidth_bytes_per_s"]),
                device=meta["device"], notes=meta["notes"], cost_source=meta.get("cost_source", ""),
                op_output_bytes=z.get("op_output_bytes"), **{k: z.get(k) for k in cls._DATAFLOW})

    def peak_floor(self, movable: np.ndarray | None = None) -> tuple[int, int]:
        """(bytes, op): a lower bound on the peak of every plan, and the op where it is reached.

        Whatever is decided, at op ``t`` the fixed memory, the op's transient memory and every activation
        in use there are resident: under KEEP, RECOMPUTE and SWAP alike an activation is on the device
        from its creation to its last forward use and from its first to its last backward use, and in
        between too when it may not leave (``movable`` false; default: neither recomputable nor
        swappable). A budget below this cannot be met.
        """
        n = self.n_ops
        if n == 0:
            return 0, 0
        stays = ~((self.recomputable | self.swappable) if movable is None else np.asarray(movable, bool))
        starts = np.concatenate([self.created, self.first_bwd_use, self.last_fwd_use[stays] + 1])
        stops = np.concatenate([self.last_fwd_use, self.last_bwd_use, self.first_bwd_use[stays] - 1])
        w = np.concatenate([self.act_bytes, self.act_bytes, self.act_bytes[stays]]).astype(np.int64)
        keep = starts <= stops  # the in-between range is empty when the uses touch
        diff = np.zeros(n + 1, np.int64)
        np.add.at(diff, starts[keep], w[keep])
        np.add.at(diff, stops[keep] + 1, -w[keep])
        floor = self.fixed_bytes + self.op_transient_bytes + np.cumsum(diff[:n])
        t = int(np.argmax(floor))
        return int(floor[t]), t

    def summary(self) -> dict:
        return {"name": self.name, "cost_source": self.cost_source, "n_ops": self.n_ops, "n_act": self.n_act,
                "act_bytes_total": int(self.act_bytes.sum()), "fixed_peak_bytes": int(self.fixed_bytes.max()),
                "compute_s": self.total_compute_s, "n_recomputable": int(self.recomputable.sum()),
                "n_swappable": int(self.swappable.sum())}
