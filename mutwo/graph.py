"""TrainGraph: one captured training step as an fx graph, with roles and per-storage liveness.

Liveness is computed per *storage*, not per node (views own no memory): every node's traced value
(``node.meta["val"]``, a fake tensor) tells which storage it lives in and how large that storage is.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

__all__ = ["Role", "TrainGraph", "StorageInfo", "is_random_op", "is_view_op", "mutated_args"]


class Role(str, enum.Enum):
    PARAM = "PARAM"
    BUFFER = "BUFFER"
    OPT_STATE = "OPT_STATE"
    INPUT = "INPUT"
    GRAD = "GRAD"
    ACTIVATION = "ACTIVATION"
    OTHER = "OTHER"


def _schema(node: fx.Node):
    return getattr(node.target, "_schema", None)


def is_random_op(node: fx.Node) -> bool:
    """Whether the op draws random numbers (recomputing it would give other values). Fused attention is
    tagged as seeded for its dropout; with ``dropout_p=0`` (training LLMs, inference) it draws none."""
    tags = getattr(node.target, "tags", ())
    if torch.Tag.nondeterministic_seeded not in tags:
        return False
    schema = _schema(node)
    names = [a.name for a in schema.arguments] if schema is not None else []
    if "dropout_p" in names:
        i = names.index("dropout_p")
        p = node.args[i] if i < len(node.args) else node.kwargs.get("dropout_p", schema.arguments[i].default_value)
        return p != 0
    return True


def is_view_op(node: fx.Node) -> bool:
    schema = _schema(node)
    if schema is None or not schema.returns:
        return False
    info = schema.returns[0].alias_info
    return info is not None and not info.is_write


def mutated_args(node: fx.Node) -> list[int]:
    """Positions of arguments the op writes to (in-place ops, ``copy_``)."""
    schema = _schema(node)
    if schema is None:
        return []
    return [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]


@dataclass
class StorageInfo:
    """One storage: who allocates it, how big it is, and when it is read."""

    sid: int
    nbytes: int
    role: Role
    created: int  # op position of the allocating op; -1 for graph inputs
    uses: list[int] = field(default_factory=list)  # op positions that read any alias of it
    producer: fx.Node | None = None  # the allocating node (getitem for multi-output ops)
    is_output: bool = False  # reaches the graph output (lives to the end)

    @property
    def last_use(self) -> int:
        return max(self.uses) if self.uses else self.created


@dataclass
class TrainGraph:
    """A whole training step (forward, loss, backward, optimizer) as one fx graph.

    ``ops`` lists the nodes that run kernels, in order (``getitem`` on a multi-output op is not an op:
    its value is made by its parent). ``fwd_end`` is the op position of the boundary marker.
    """

    gm: fx.GraphModule
    input_roles: list[Role]  # aligned with the placeholders
    input_names: list[str]
    n_params: int
    ops: list[fx.Node] = field(init=False)
    op_index: dict[fx.Node, int] = field(init=False)
    fwd_end: int = field(init=False)
    bwd_start: int = field(init=False)
    storages: list[StorageInfo] = field(init=False)
    storage_of: dict[fx.Node, int] = field(init=False)
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.analyze()

    # ------------------------------------------------------------------ analysis
    def analyze(self) -> None:
        """(Re)compute op order, boundary, storages and liveness from the graph."""
        g = self.gm.graph
        self.ops = [n for n in g.nodes if n.op == "call_function" and n.target is not operator.getitem]
        self.op_index = {n: i for i, n in enumerate(self.ops)}
        ends = [i for i, n in enumerate(self.ops) if n.target is torch.ops.mutwo.fwd_end.default]
        starts = [i for i, n in enumerate(self.ops) if n.target is torch.ops.mutwo.bwd_start.default]
        if len(ends) != 1 or len(starts) != 1:
            raise RuntimeError("captured graph must hold exactly one forward/backward boundary marker")
        self.fwd_end, self.bwd_start = ends[0], starts[0]
        self._storages()

    def _position(self, node: fx.Node) -> int:
        """Op position at which a node's value becomes available."""
        if node.target is operator.getitem:
            return self._position(node.args[0])
        return self.op_index.get(node, -1)

    def _storages(self) -> None:
        key_to_sid: dict[StorageWeakRef, int] = {}
        self.storages, self.storage_of = [], {}
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        roles = dict(zip(placeholders, self.input_roles))
        for node in self.gm.graph.nodes:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                continue
            key = StorageWeakRef(val.untyped_storage())
            sid = key_to_sid.get(key)
            if sid is None:
                sid = len(self.storages)
                key_to_sid[key] = sid
                role = roles.get(node, Role.OTHER)
                created = -1 if node.op == "placeholder" else self._position(node)
                self.storages.append(StorageInfo(sid, int(val.untyped_storage().nbytes()), role, created,
                                                 producer=None if node.op == "placeholder" else node))
            self.storage_of[node] = sid
        for node in self.gm.graph.nodes:
            if node.op == "output":
                for arg in node.all_input_nodes:
                    if arg in self.storage_of:
                        self.storages[self.storage_of[arg]].is_output = True
                continue
            if node.op != "call_function" or node.target is operator.getitem:
                continue
            pos = self.op_index[node]
            for arg in node.all_input_nodes:
                sid = self.storage_of.get(arg)
                if sid is not None:
                    self.storages[sid].uses.append(pos)
        self._assign_roles()

    def _assign_roles(self) -> None:
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        grads = out.args[0][1] if isinstance(out.args[0], (tuple, list)) and len(out.args[0]) > 1 else []
        for g in grads:
            if isinstance(g, fx.Node) and g in self.storage_of:
                self.storages[self.storage_of[g]].role = Role.GRAD
        for s in self.storages:
            # graph outputs (the loss) must survive the step anyway: not a decidable activation
            if (s.role is Role.OTHER and not s.is_output and 0 <= s.created <= self.fwd_end
                    and any(u > self.fwd_end for u in s.uses)):
                s.role = Role.ACTIVATION

    # ------------------------------------------------------------------ queries
    @property
    def activations(self) -> list[StorageInfo]:
        return [s for s in self.storages if s.role is Role.ACTIVATION]

    def live_bytes(self) -> np.ndarray:
        """Bytes of all storages live while each op runs (inputs live throughout; outputs to the end)."""
        n = len(self.ops)
        diff = np.zeros(n + 1, dtype=np.int64)
        for s in self.storages:
            start = max(s.created, 0)
            end = n - 1 if (s.created < 0 or s.is_output) else s.last_use
            diff[start] += s.nbytes
            diff[end + 1] -= s.nbytes
        return np.cumsum(diff)[:n]

    def activation_frame(self) -> pd.DataFrame:
        rows = []
        for s in self.activations:
            fwd = [u for u in s.uses if u <= self.fwd_end]
            bwd = [u for u in s.uses if u > self.fwd_end]
            rows.append({"name": s.producer.name, "storage": s.sid, "bytes": s.nbytes, "created": s.created,
                         "last_fwd_use": max([s.created, *fwd]), "first_bwd_use": min(bwd),
                         "last_bwd_use": max(bwd), "op": str(self._op_of(s.producer).target)})
        return pd.DataFrame(rows)

    def _op_of(self, node: fx.Node) -> fx.Node:
        return node.args[0] if node.target is operator.getitem else node

    def op_frame(self) -> pd.DataFrame:
        phase = ["forward" if i <= self.fwd_end else "backward" for i in range(len(self.ops))]
        return pd.DataFrame({"position": range(len(self.ops)), "name": [n.name for n in self.ops],
                             "target": [str(n.target) for n in self.ops], "phase": phase})

    def summary(self) -> dict:
        acts = self.activations
        return {"n_ops": len(self.ops), "fwd_end": self.fwd_end, "n_activations": len(acts),
                "activation_bytes": int(sum(s.nbytes for s in acts)),
                "param_bytes": int(sum(s.nbytes for s in self.storages if s.role is Role.PARAM)),
                "liveness_peak_bytes": int(self.live_bytes().max()) if self.ops else 0}
