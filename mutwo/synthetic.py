"""Deterministic synthetic Problems, so solvers and the simulator can be tested and benchmarked
without torch: a plain chain, a ResNet-like residual stack, and a large random DAG shaped like a real
training graph. Everything is built with vectorised numpy from one seeded Generator, so a seed
names a Problem and 10,000-activation instances take a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mutwo.problem import Problem

__all__ = ["chain", "residual", "random_dag"]

MiB = 1 << 20


def _split(offsets: np.ndarray, flat: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, offsets[1:-1]) if len(offsets) > 1 else []


def _ragged_ranges(first: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the integer ranges ``first[i] .. first[i]+length[i]-1``."""
    offsets = np.zeros(len(first) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], length)
    return offsets, np.repeat(first, length) + within


def _round_bytes(x: np.ndarray, quantum: int = 512) -> np.ndarray:
    return np.maximum(quantum, np.rint(np.asarray(x, np.float64) / quantum).astype(np.int64) * quantum)


def _grads_appearing(n_ops: int, fwd_end: int, grad_ops: np.ndarray, grad_bytes: np.ndarray) -> np.ndarray:
    """Gradient bytes alive at each op: each chunk appears at its backward op and stays."""
    g = np.zeros(n_ops, np.int64)
    np.add.at(g, grad_ops, grad_bytes)
    out = np.cumsum(g)
    out[: fwd_end + 1] = 0
    return out


# ------------------------------------------------------------------------------------------------
def chain(n_layers: int, *, act_bytes: int = 4 * MiB, op_time_s: float = 1e-3, param_bytes: int = MiB,
          host_bandwidth_bytes_per_s: float = 12e9, name: str | None = None) -> Problem:
    """A plain chain: layer ``i`` makes activation ``i`` from activation ``i-1``.

    Ops: ``0..n-1`` forward layers, ``n`` the loss (``fwd_end``), ``n+1..2n`` the layer backwards in
    reverse, ``2n+1`` the optimizer step. Backward of layer ``i`` reads its input ``i-1`` and its
    output ``i``; so activation ``i`` is first read by layer ``i+1``'s backward, last by its own.
    """
    if n_layers < 1:
        raise ValueError("chain needs at least one layer")
    n = n_layers
    idx = np.arange(n)
    fwd_end = n
    bwd_of = 2 * n - idx  # backward op position of layer i
    first_bwd = np.where(idx == n - 1, bwd_of, bwd_of - 1)
    n_ops = 2 * n + 2
    params = n * param_bytes
    fixed = np.full(n_ops, params + params * 2 + act_bytes, np.int64)  # params, Adam state, input batch
    fixed += _grads_appearing(n_ops, fwd_end, bwd_of, np.full(n, param_bytes))
    op_names = ([f"layer{i}" for i in range(n)] + ["loss"] + [f"layer{i}_bwd" for i in range(n - 1, -1, -1)]
                + ["optimizer_step"])
    return Problem(
        name=name or f"chain{n}", op_names=op_names, op_time_s=np.full(n_ops, op_time_s),
        op_transient_bytes=np.zeros(n_ops, np.int64), fixed_bytes=fixed, fwd_end=fwd_end,
        act_names=[f"a{i}" for i in range(n)], act_bytes=np.full(n, act_bytes, np.int64), created=idx,
        last_fwd_use=idx + 1, first_bwd_use=first_bwd, last_bwd_use=bwd_of,
        recomputable=np.ones(n, bool), swappable=np.ones(n, bool),
        recompute_ops=[np.array([i]) for i in range(n)],
        recompute_sources=[np.array([i - 1]) if i else np.zeros(0, np.int64) for i in range(n)],
        recompute_temp_bytes=np.zeros(n, np.int64), host_bandwidth_bytes_per_s=host_bandwidth_bytes_per_s,
        notes={"generator": "chain", "n_layers": n})


# ------------------------------------------------------------------------------------------------
_BLOCK_FWD = ("conv1", "bn_relu1", "conv2", "bn2", "add_relu")
_BLOCK_BWD = ("add_relu_bwd", "bn2_bwd", "conv2_bwd", "bn_relu1_bwd", "conv1_bwd")


@dataclass(frozen=True)
class _Blocks:
    """Op and activation positions of a residual stack of ``B`` blocks."""

    B: int
    fwd_end: int  # the loss
    n_ops: int
    fpos: np.ndarray  # [B, 5] forward op positions
    bpos: np.ndarray  # [B, 5] backward op positions
    stem_bwd: int
    x_of: np.ndarray  # [B] block input activation (the stem or the previous block's out)
    c1: np.ndarray  # [B] activation indices: 0 is the stem, block b has (c1, r1, c2, out) at 1 + 4b + k
    r1: np.ndarray
    c2: np.ndarray
    out: np.ndarray

    @classmethod
    def of(cls, B: int) -> _Blocks:
        fwd_end = 1 + 5 * B
        blk = np.arange(B)
        c1, r1, c2, out = (1 + 4 * blk + k for k in range(4))
        return cls(B, fwd_end, fwd_end + 5 * B + 3,  # + block backwards, stem backward, optimizer step
                   fpos=1 + 5 * blk[:, None] + np.arange(5)[None, :],
                   bpos=fwd_end + 1 + 5 * (B - 1 - blk)[:, None] + np.arange(5)[None, :],
                   stem_bwd=fwd_end + 1 + 5 * B, x_of=np.concatenate([[0], 4 + 4 * blk[:-1]]),
                   c1=c1, r1=r1, c2=c2, out=out)


def _residual_uses(k: _Blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Created, last forward use, first and last backward use of every activation."""
    m, B, fpos, bpos = 1 + 4 * k.B, k.B, k.fpos, k.bpos
    created, lfu, fbu, lbu = (np.empty(m, np.int64) for _ in range(4))
    created[0], lfu[0], fbu[0], lbu[0] = 0, fpos[0, 4], bpos[0, 4], k.stem_bwd
    created[k.c1], lfu[k.c1], fbu[k.c1], lbu[k.c1] = fpos[:, 0], fpos[:, 1], bpos[:, 3], bpos[:, 3]
    created[k.r1], lfu[k.r1], fbu[k.r1], lbu[k.r1] = fpos[:, 1], fpos[:, 2], bpos[:, 2], bpos[:, 3]
    created[k.c2], lfu[k.c2], fbu[k.c2], lbu[k.c2] = fpos[:, 2], fpos[:, 3], bpos[:, 1], bpos[:, 1]
    blk = np.arange(B)
    nxt = np.minimum(blk + 1, B - 1)
    created[k.out] = fpos[:, 4]
    lfu[k.out] = np.where(blk < B - 1, fpos[nxt, 4], k.fwd_end)  # next block's skip add, or the loss
    fbu[k.out] = np.where(blk < B - 1, bpos[nxt, 4], bpos[:, 0])  # next block's conv1 bwd comes first
    lbu[k.out] = bpos[:, 0]
    return created, lfu, fbu, lbu


def _residual_recompute(k: _Blocks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Recompute ops and sources: ``out`` re-runs bn2 and add_relu and reads the skip and ``c2``."""
    m = 1 + 4 * k.B
    ops: list[np.ndarray] = [np.array([0])] * m  # the stem; every other entry is set below
    srcs: list[np.ndarray] = [np.zeros(0, np.int64)] * m
    for b in range(k.B):
        x, fp = int(k.x_of[b]), k.fpos[b]
        ops[k.c1[b]], srcs[k.c1[b]] = fp[[0]], np.array([x])
        ops[k.r1[b]], srcs[k.r1[b]] = fp[[1]], np.array([k.c1[b]])
        ops[k.c2[b]], srcs[k.c2[b]] = fp[[2]], np.array([k.r1[b]])
        ops[k.out[b]], srcs[k.out[b]] = fp[[3, 4]], np.array([x, k.c2[b]])
    return ops, srcs


def _residual_op_times(k: _Blocks, rng: np.random.Generator, conv_time_s: float,
                       pointwise_time_s: float) -> np.ndarray:
    """Convs (and their backwards, twice as long) and pointwise ops, each +-10% (seeded)."""
    op_time = np.full(k.n_ops, pointwise_time_s)
    op_time[k.fpos[:, [0, 2]].ravel()] = conv_time_s
    op_time[k.bpos[:, [2, 4]].ravel()] = 2 * conv_time_s
    op_time *= rng.uniform(0.9, 1.1, k.n_ops)
    return op_time


def _residual_fixed(k: _Blocks, act_bytes: int, param_bytes: int, c2_bytes: np.ndarray) -> np.ndarray:
    """Parameters, Adam state and the input batch; gradients appearing in backward; bn2's output in
    forward until add_relu reads it."""
    params = k.B * param_bytes
    fixed = np.full(k.n_ops, 3 * params + act_bytes, np.int64)
    fixed += _grads_appearing(k.n_ops, k.fwd_end, k.bpos[:, [2, 4]].ravel(), np.full(2 * k.B, param_bytes // 2))
    fixed[k.fpos[:, 3]] += c2_bytes
    fixed[k.fpos[:, 4]] += c2_bytes
    return fixed


def _residual_names(B: int) -> tuple[list[str], list[str]]:
    """Op names (forward, loss, backward in reverse, stem backward, optimizer) and activation names."""
    op_names = ["stem"]
    for b in range(B):
        op_names += [f"block{b}.{k}" for k in _BLOCK_FWD]
    op_names.append("loss")
    for b in range(B - 1, -1, -1):
        op_names += [f"block{b}.{k}" for k in _BLOCK_BWD]
    op_names += ["stem_bwd", "optimizer_step"]
    act_names = ["stem"]
    for b in range(B):
        act_names += [f"block{b}.{k}" for k in ("c1", "r1", "c2", "out")]
    return op_names, act_names


def residual(n_blocks: int, *, act_bytes: int = 4 * MiB, conv_time_s: float = 2e-3,
             pointwise_time_s: float = 2e-4, param_bytes: int = 2 * MiB,
             host_bandwidth_bytes_per_s: float = 12e9, seed: int = 0, name: str | None = None) -> Problem:
    """A ResNet-like stack of basic blocks with identity skips.

    Forward: a stem op, then per block ``conv1 -> bn_relu1 -> conv2 -> bn2 -> add_relu(x, .)``, then
    the loss. Activations per block: ``c1``, ``r1``, ``c2`` and the block output ``out``; ``bn2``'s
    output is a forward temporary. Recomputing ``out`` re-runs ``bn2`` and ``add_relu`` and reads the
    block input ``x`` (the skip) and ``c2``; so recompute sources include the block input, and ``bn2``'s
    output is a recompute temporary. Sizes vary by +-25% (seeded) so solvers see ties broken.
    """
    if n_blocks < 1:
        raise ValueError("residual needs at least one block")
    rng = np.random.default_rng(seed)
    k = _Blocks.of(n_blocks)
    m = 1 + 4 * k.B
    created, lfu, fbu, lbu = _residual_uses(k)
    ops, srcs = _residual_recompute(k)
    nbytes = _round_bytes(act_bytes * rng.uniform(0.75, 1.25, m))  # drawn before the op times
    temp = np.zeros(m, np.int64)
    temp[k.out] = nbytes[k.c2]  # bn2's output, alive only while `out` is recomputed
    op_time = _residual_op_times(k, rng, conv_time_s, pointwise_time_s)
    transient = np.zeros(k.n_ops, np.int64)
    transient[k.fpos[:, [0, 2]].ravel()] = act_bytes // 4  # conv workspace
    op_names, act_names = _residual_names(k.B)
    return Problem(
        name=name or f"residual{k.B}", op_names=op_names, op_time_s=op_time, op_transient_bytes=transient,
        fixed_bytes=_residual_fixed(k, act_bytes, param_bytes, nbytes[k.c2]), fwd_end=k.fwd_end,
        act_names=act_names, act_bytes=nbytes, created=created, last_fwd_use=lfu, first_bwd_use=fbu,
        last_bwd_use=lbu, recomputable=np.ones(m, bool), swappable=np.ones(m, bool), recompute_ops=ops,
        recompute_sources=srcs, recompute_temp_bytes=temp, host_bandwidth_bytes_per_s=host_bandwidth_bytes_per_s,
        notes={"generator": "residual", "n_blocks": k.B, "seed": seed})


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Phases:
    """How many ops a random training graph has in forward (the loss last), backward and optimizer."""

    n_fwd: int
    n_grad: int
    n_opt: int

    @classmethod
    def of(cls, n_act: int, ops_per_act: float) -> _Phases:
        """40% forward (at least one op per activation and the loss), 55% backward, 5% optimizer."""
        n_ops = max(int(round(ops_per_act * n_act)), n_act + 4)
        n_fwd = max(n_act + 1, int(round(0.40 * n_ops)))
        n_opt = max(1, int(round(0.05 * n_ops)))
        return cls(n_fwd, max(2, n_ops - n_fwd - n_opt), n_opt)

    @property
    def n_ops(self) -> int:
        return self.n_fwd + self.n_grad + self.n_opt

    @property
    def fwd_end(self) -> int:
        return self.n_fwd - 1

    @property
    def bwd(self) -> np.ndarray:
        return np.arange(self.fwd_end + 1, self.fwd_end + 1 + self.n_grad)


def _dag_sources(rng: np.random.Generator, m: int, skip_prob: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recompute sources: mostly the previous activation, sometimes a skip from up to 30 back. Returns
    the CSR (offsets, sources) and the consumer of each source entry."""
    idx = np.arange(m)
    s1 = np.where((idx >= 1) & (rng.random(m) < 0.92), idx - 1, -1)
    back = rng.integers(2, 31, m)
    s2 = np.where((idx >= 2) & (rng.random(m) < skip_prob), np.maximum(idx - back, 0), -1)
    s2[s2 == s1] = -1
    pairs = np.stack([s1, s2], axis=1)
    has = pairs >= 0
    src_off = np.zeros(m + 1, np.int64)
    np.cumsum(has.sum(axis=1), out=src_off[1:])
    return src_off, pairs[has], np.repeat(idx, has.sum(axis=1))


def _dag_uses(rng: np.random.Generator, ph: _Phases, created: np.ndarray, src_flat: np.ndarray,
              consumer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last forward use (the next op or few, and every op that re-makes a consumer), and first and
    last backward use, which mirror the forward uses (the gradient of the op that read `a` reads `a`)."""
    m, fwd_end, n_grad = len(created), ph.fwd_end, ph.n_grad
    lfu = created + rng.geometric(0.6, m)
    np.maximum.at(lfu, src_flat, created[consumer])
    lfu = np.minimum(lfu, fwd_end)

    def mirror(p: np.ndarray) -> np.ndarray:
        return fwd_end + 1 + ((fwd_end - p) * (n_grad - 1)) // max(fwd_end, 1)

    fbu = np.maximum(mirror(lfu) - (rng.geometric(0.7, m) - 1), fwd_end + 1)
    lbu = np.minimum(mirror(created) + (rng.geometric(0.6, m) - 1), fwd_end + n_grad)
    return lfu, fbu, np.maximum(lbu, fbu)


def _dag_recompute_ops(rng: np.random.Generator, created: np.ndarray, nbytes: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recompute ops: the producer plus up to two view/elementwise ops just before it (CSR), and the
    temporaries those extra ops hold."""
    prev = np.concatenate([[-1], created[:-1]])
    length = np.minimum(created - prev, rng.integers(1, 4, len(created)))
    ro_off, ro_flat = _ragged_ranges(created - length + 1, length)
    return ro_off, ro_flat, _round_bytes(0.5 * nbytes * (length - 1)) * (length > 1)


def _dag_op_times(rng: np.random.Generator, ph: _Phases, created: np.ndarray, nbytes: np.ndarray,
                  mean_op_time_s: float, mean_act_bytes: int) -> np.ndarray:
    """Lognormal op times; producers scale with their output size; backward ~2x forward."""
    op_time = mean_op_time_s * rng.lognormal(-0.5, 1.0, ph.n_ops)
    op_time[created] *= (nbytes / mean_act_bytes) ** 0.7
    op_time[ph.fwd_end + 1: ph.fwd_end + 1 + ph.n_grad] *= 2.0
    op_time[ph.fwd_end + 1 + ph.n_grad:] *= 0.2
    return op_time


def _dag_fixed(rng: np.random.Generator, ph: _Phases, params: int, mean_act_bytes: int) -> np.ndarray:
    """Fixed memory: batch + params + Adam state, temporaries, activation gradients in backward, and
    parameter gradients appearing in backward."""
    n_ops, bwd = ph.n_ops, ph.bwd
    fixed = np.full(n_ops, mean_act_bytes + 3 * params, np.int64)
    tmp_mask = rng.random(n_ops) < 0.3
    fixed += np.where(tmp_mask, _round_bytes(rng.exponential(0.5 * mean_act_bytes, n_ops)), 0)
    fixed[bwd] += _round_bytes(2 * mean_act_bytes * rng.lognormal(-0.125, 0.5, ph.n_grad))  # activation grads
    grad_ops = bwd[rng.random(ph.n_grad) < 0.3]
    if len(grad_ops) == 0:
        grad_ops = bwd[-1:]
    shares = rng.exponential(1.0, len(grad_ops))
    grad_bytes = np.floor(params * shares / shares.sum()).astype(np.int64)
    return fixed + _grads_appearing(n_ops, ph.fwd_end, grad_ops, grad_bytes)


def _dag_names(ph: _Phases, recomputable: np.ndarray) -> tuple[list[str], list[str]]:
    """Op names by phase and position (the loss by name); activations that cannot be recomputed are
    named ``rand``."""
    phase = np.repeat(np.array(["fwd", "bwd", "opt"]), [ph.n_fwd, ph.n_grad, ph.n_opt])
    op_names = [f"{p}{t}" for p, t in zip(phase.tolist(), range(ph.n_ops), strict=True)]
    op_names[ph.fwd_end] = "loss"
    return op_names, [f"{'rand' if not r else 'act'}{a}" for a, r in enumerate(recomputable.tolist())]


def random_dag(n_act: int, seed: int = 0, *, ops_per_act: float = 6.5, mean_act_bytes: int = 4 * MiB,
               size_sigma: float = 1.0, mean_op_time_s: float = 5e-5, frac_random: float = 0.05,
               frac_unswappable: float = 0.03, skip_prob: float = 0.15, param_frac: float = 0.15,
               swap_ratio: float = 0.5, transient_frac: float = 0.1, name: str | None = None) -> Problem:
    """A random training graph shaped like a real one.

    About ``ops_per_act`` ops per activation (40% forward, 55% backward, 5% optimizer). Activations are
    made in forward, read by the next few ops and sometimes by a skip connection much later; their
    backward uses mirror their forward uses. Fixed memory holds the input batch, parameters and Adam
    state, plus temporaries, and rises through backward as parameter gradients appear. ``frac_random``
    activations (dropout-like) cannot be recomputed. The host link is set so that swapping every
    activation would take ``swap_ratio`` of the compute time: early activations hide, late ones don't.
    """
    if n_act < 1:
        raise ValueError("random_dag needs at least one activation")
    rng = np.random.default_rng(seed)  # the steps below draw from it in this order: a seed names a Problem
    m = n_act
    ph = _Phases.of(m, ops_per_act)
    created = np.sort(rng.choice(ph.fwd_end, size=m, replace=False)).astype(np.int64)
    nbytes = _round_bytes(mean_act_bytes * rng.lognormal(-0.5 * size_sigma**2, size_sigma, m))
    src_off, src_flat, consumer = _dag_sources(rng, m, skip_prob)
    lfu, fbu, lbu = _dag_uses(rng, ph, created, src_flat, consumer)
    ro_off, ro_flat, temp = _dag_recompute_ops(rng, created, nbytes)
    recomputable = rng.random(m) >= frac_random
    swappable = rng.random(m) >= frac_unswappable
    op_time = _dag_op_times(rng, ph, created, nbytes, mean_op_time_s, mean_act_bytes)
    bandwidth = float(nbytes.sum()) / (swap_ratio * float(op_time.sum()))
    fixed = _dag_fixed(rng, ph, int(param_frac * nbytes.sum()), mean_act_bytes)
    transient = np.where(rng.random(ph.n_ops) < transient_frac,
                         _round_bytes(mean_act_bytes * rng.lognormal(-0.5, 1.0, ph.n_ops)), 0)
    op_names, act_names = _dag_names(ph, recomputable)
    return Problem(
        name=name or f"random_dag{m}_s{seed}", op_names=op_names, op_time_s=op_time,
        op_transient_bytes=transient, fixed_bytes=fixed, fwd_end=ph.fwd_end, act_names=act_names,
        act_bytes=nbytes, created=created, last_fwd_use=lfu, first_bwd_use=fbu, last_bwd_use=lbu,
        recomputable=recomputable, swappable=swappable, recompute_ops=_split(ro_off, ro_flat),
        recompute_sources=_split(src_off, src_flat), recompute_temp_bytes=temp,
        host_bandwidth_bytes_per_s=bandwidth, notes={"generator": "random_dag", "n_act": m, "seed": seed})
