"""Where workload builders live: the built-in ones (made from code or configs with random weights,
nothing is downloaded) and a scenario's own ``module:function``, resolved, checked and called here.

Each builder is ``builder(batch_size, device="cpu", **options) -> Workload``; scenarios name them by
key (``resnet152``, ``bert-base``, ``gpt2``, ``llama-7b``, ``vit-b16``, ...) or point to a user's own
``module:function`` of the same shape. The transformer builders take ``meta=True`` to build on the meta
device: a 7B model is then analysed (fake tracing, estimated costs) without allocating its weights.
Importing this module does not import torch (the builders do, when called), so a scenario's model and
options are checked at load without it.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from mutwo.importing import import_named
from mutwo.scenario import Scenario, ScenarioError
from mutwo.workload import Workload

__all__ = ["ZOO", "build_workload", "toy_mlp", "resnet", "bert", "gpt2", "llama", "vit", "DTYPES", "ATTENTION",
           "resolve_builder", "check_builder_options", "call_builder", "available_ram_bytes"]


def _classification_loss(model, x, y):
    import torch.nn.functional as F

    return F.cross_entropy(model(x), y)


def toy_mlp(batch_size: int, device: str = "cpu", width: int = 64, depth: int = 4, classes: int = 10,
            seed: int = 0) -> Workload:
    import torch

    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(depth):
        layers += [torch.nn.Linear(width if i else 32, width), torch.nn.ReLU(inplace=True)]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, classes)).to(device)
    x = torch.randn(batch_size, 32, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    return Workload(model, (x, y), _classification_loss, f"mlp-{depth}x{width}")


def resnet(batch_size: int, device: str = "cpu", depth: int = 18, image_size: int = 224,
           num_classes: int = 1000, seed: int = 0) -> Workload:
    import torch
    import torchvision

    torch.manual_seed(seed)
    ctor = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50,
            101: torchvision.models.resnet101, 152: torchvision.models.resnet152}
    if depth not in ctor:
        raise ValueError(f"resnet depth={depth} is not available; use one of {sorted(ctor)}")
    model = ctor[depth](num_classes=num_classes).to(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    return Workload(model, (x, y), _classification_loss, f"resnet{depth}")


def _mlm_loss(model, input_ids, attention_mask, labels):
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def bert(batch_size: int, device: str = "cpu", seq_len: int = 128, hidden_size: int = 768,
         num_hidden_layers: int = 12, num_attention_heads: int = 12, intermediate_size: int = 3072,
         vocab_size: int = 30522, dropout: float = 0.1, seed: int = 0) -> Workload:
    """BertForMaskedLM from a config. Eager attention and an explicit attention mask avoid the
    data-dependent checks (``aten._local_scalar_dense``) that break tracing of SDPA / mask-free BERT."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=max(512, seq_len), hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, attn_implementation="eager")
    model = BertForMaskedLM(config).to(device)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
    labels = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    return Workload(model, (ids, mask, labels), _mlm_loss, f"bert-{num_hidden_layers}x{hidden_size}")


# ---------------------------------------------------------------------- transformers and LLMs
# dtype: "float32"; "bfloat16" (parameters, gradients, activations and the optimizer state in bf16:
# torch.optim keeps state in the parameter's dtype); "autocast-bf16" (fp32 parameters, gradients and
# state; the forward under torch.autocast, matmuls in bf16). docs/devices.md, "dtype accounting".
DTYPES = ("float32", "bfloat16", "autocast-bf16")
# attention: "sdpa" (PyTorch's fused attention where the traced device has it: flash attention, which
# saves no S x S matrix) or "eager" (matmul + softmax, the S x S probabilities saved)
ATTENTION = ("sdpa", "eager")
# what fake tracing holds per decoder layer (graph nodes and fake tensors; ~7 MiB measured on a 7B
# Llama at sequence 4096), taken 4x, over what a Python process with torch holds before tracing
FAKE_BYTES_PER_LAYER = 32 << 20
FAKE_BASE_BYTES = 2 << 30


def available_ram_bytes() -> int:
    """Memory this machine can still give (MemAvailable; total RAM where /proc is absent)."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _check_options(dtype: str, attention: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r} is not supported; use one of {', '.join(ATTENTION)}")


def _check_ram(name: str, probe, layers: int, meta: bool) -> None:
    """Refuse, before anything is allocated or traced, a model this machine cannot hold: its weights and
    AdamW state when built for real, the fake-traced graph when built on meta."""
    free = available_ram_bytes()
    if meta:
        need, what = FAKE_BASE_BYTES + layers * FAKE_BYTES_PER_LAYER, f"tracing its {layers} layers in fake mode"
        fix = "use fewer layers"
    else:
        weights = sum(p.numel() * p.element_size() for p in probe.parameters())
        need, what = 3 * weights, "its weights and AdamW's two state tensors per weight"
        fix = "build it with meta=True to analyse it without allocating weights"
    if need > free:
        raise MemoryError(f"{name}: {what} needs about {need / 2**30:.1f} GiB of RAM and {free / 2**30:.1f} GiB "
                          f"is available; {fix}")


def _hf_model(name: str, make: Callable, *, device: str, dtype: str, meta: bool, layers: int, seed: int):
    """Build ``make()`` on meta first (free) to check it fits, then for real unless ``meta``."""
    import torch

    with torch.device("meta"):
        probe = make()
    if dtype == "bfloat16":
        probe = probe.to(torch.bfloat16)
    _check_ram(name, probe, layers, meta)
    if meta:
        return probe
    torch.manual_seed(seed)
    with torch.device(device):
        model = make()
    return model.to(torch.bfloat16) if dtype == "bfloat16" else model


def _autocast(loss_fn: Callable, dtype: str, device: str) -> Callable:
    """``loss_fn`` under bf16 autocast when asked (meta models trace as fake CPU tensors: CPU's policy)."""
    if dtype != "autocast-bf16":
        return loss_fn

    def autocast_loss(model, *inputs):
        import torch

        with torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16):
            return loss_fn(model, *inputs)

    return autocast_loss


def _lm_loss(model, input_ids):
    return model(input_ids=input_ids, labels=input_ids).loss


def _token_batch(batch_size: int, seq_len: int, vocab_size: int, device: str, meta: bool):
    import torch

    return torch.randint(0, vocab_size, (batch_size, seq_len), device="meta" if meta else device)


def gpt2(batch_size: int, device: str = "cpu", seq_len: int = 1024, n_embd: int = 768, n_layer: int = 12,
         n_head: int = 12, vocab_size: int = 50257, dropout: float = 0.0, dtype: str = "float32",
         attention: str = "sdpa", meta: bool = False, seed: int = 0) -> Workload:
    """GPT2LMHeadModel from a config (random weights), next-token loss on random tokens. ``meta``: built
    on the meta device (nothing allocated; analysed by fake tracing only). No KV cache (training)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _check_options(dtype, attention)
    config = GPT2Config(vocab_size=vocab_size, n_positions=max(1024, seq_len), n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        use_cache=False, attn_implementation=attention)
    name = f"gpt2-{n_layer}x{n_embd}"
    model = _hf_model(name, lambda: GPT2LMHeadModel(config), device=device, dtype=dtype, meta=meta,
                      layers=n_layer, seed=seed)
    ids = _token_batch(batch_size, seq_len, vocab_size, device, meta)
    return Workload(model, (ids,), _autocast(_lm_loss, dtype, device), name)


def llama(batch_size: int, device: str = "cpu", seq_len: int = 2048, hidden_size: int = 4096,
          intermediate_size: int = 11008, num_hidden_layers: int = 32, num_attention_heads: int = 32,
          num_key_value_heads: int = 32, vocab_size: int = 32000, tie_word_embeddings: bool = False,
          rope_theta: float = 10000.0, dtype: str = "float32", attention: str = "sdpa", meta: bool = False,
          seed: int = 0) -> Workload:
    """A Llama-style decoder (LlamaForCausalLM: RMSNorm, SwiGLU, rotary embeddings, grouped-query
    attention when ``num_key_value_heads`` < ``num_attention_heads``) from a config with random weights,
    next-token loss on random tokens; no KV cache. ``meta``: see `gpt2`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _check_options(dtype, attention)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_key_value_heads, max_position_embeddings=max(2048, seq_len),
                         tie_word_embeddings=tie_word_embeddings,
                         rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
                         use_cache=False, attn_implementation=attention)
    name = f"llama-{num_hidden_layers}x{hidden_size}"
    model = _hf_model(name, lambda: LlamaForCausalLM(config), device=device, dtype=dtype, meta=meta,
                      layers=num_hidden_layers, seed=seed)
    ids = _token_batch(batch_size, seq_len, vocab_size, device, meta)
    return Workload(model, (ids,), _autocast(_lm_loss, dtype, device), name)


def _image_loss(model, pixel_values, labels):
    return model(pixel_values=pixel_values, labels=labels).loss


def vit(batch_size: int, device: str = "cpu", image_size: int = 224, patch_size: int = 16, hidden_size: int = 768,
        num_hidden_layers: int = 12, num_attention_heads: int = 12, intermediate_size: int = 3072,
        num_classes: int = 1000, dropout: float = 0.0, dtype: str = "float32", attention: str = "sdpa",
        meta: bool = False, seed: int = 0) -> Workload:
    """ViTForImageClassification from a config (ViT-B/16 by default), cross-entropy on random images."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    _check_options(dtype, attention)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                       num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                       intermediate_size=intermediate_size, num_labels=num_classes, hidden_dropout_prob=dropout,
                       attention_probs_dropout_prob=dropout, attn_implementation=attention)
    name = f"vit-{num_hidden_layers}x{hidden_size}-p{patch_size}"
    model = _hf_model(name, lambda: ViTForImageClassification(config), device=device, dtype=dtype, meta=meta,
                      layers=num_hidden_layers, seed=seed)
    where = "meta" if meta else device
    x = torch.randn(batch_size, 3, image_size, image_size, device=where,
                    dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    y = torch.randint(0, num_classes, (batch_size,), device=where)
    return Workload(model, (x, y), _autocast(_image_loss, dtype, device), name)


def _preset(fn: Callable[..., Workload], **fixed) -> Callable[..., Workload]:
    def build(batch_size: int, device: str = "cpu", **options) -> Workload:
        return fn(batch_size, device=device, **{**fixed, **options})

    build.__doc__ = f"{fn.__name__} with {fixed}"
    # the builder's own parameters, the preset's values as defaults: a scenario's model_options are
    # then checked against them when it is loaded (a typo is refused before anything is built)
    sig = inspect.signature(fn)
    build.__signature__ = sig.replace(parameters=[
        q.replace(default=fixed[q.name]) if q.name in fixed else q for q in sig.parameters.values()])
    return build


ZOO: dict[str, Callable[..., Workload]] = {
    "mlp": toy_mlp,
    "resnet18": _preset(resnet, depth=18),
    "resnet50": _preset(resnet, depth=50),
    "resnet152": _preset(resnet, depth=152),
    "bert-base": _preset(bert),
    "bert-tiny": _preset(bert, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=512, vocab_size=1000, seq_len=32),
    # GPT-2 sizes of the GPT-2 paper / Hugging Face configs (124M, 355M, 774M, 1.5B parameters)
    "gpt2": _preset(gpt2),
    "gpt2-medium": _preset(gpt2, n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": _preset(gpt2, n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": _preset(gpt2, n_embd=1600, n_layer=48, n_head=25),
    "gpt2-tiny": _preset(gpt2, n_embd=64, n_layer=2, n_head=4, vocab_size=1000, seq_len=32),
    # Llama-style: 1b = Llama-3.2-1B dims, 7b = Llama-2-7B (no GQA), 8b = Llama-3-8B (GQA 32/8);
    # 100m a small GQA model of the same shape family
    "llama-tiny": _preset(llama, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=1000, seq_len=32),
    "llama-100m": _preset(llama, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True),
    "llama-1b": _preset(llama, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                        rope_theta=500000.0),
    "llama-7b": _preset(llama),
    "llama-8b": _preset(llama, intermediate_size=14336, num_key_value_heads=8, vocab_size=128256,
                        rope_theta=500000.0),
    "vit-b16": _preset(vit),
}


def build_workload(name: str, batch_size: int, device: str = "cpu", **options) -> Workload:
    if name not in ZOO:
        close = difflib.get_close_matches(name, ZOO, n=3)
        raise KeyError(f"unknown model {name!r}; did you mean {close}? available: {sorted(ZOO)}")
    return ZOO[name](batch_size, device=device, **options)


# ---------------------------------------------------------------------- a scenario's builder
def resolve_builder(model: str) -> Callable[..., Any]:
    """The workload builder a ``model`` value names: a zoo key or an importable ``module:function``.
    Raises ValueError saying what is wrong (the scenario names the field)."""
    if ":" in model:
        return _user_builder(model)
    if model not in ZOO:
        close = difflib.get_close_matches(model, list(ZOO), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown model {model!r}; {hint}zoo: {', '.join(sorted(ZOO))}; or name your own "
                         f"builder as 'module:function'")
    return ZOO[model]


def _user_builder(model: str) -> Callable[..., Any]:
    """Import ``module:function``; refuse what is not a function, or is annotated to return something
    other than a Workload (an unannotated builder is checked on its first call)."""
    _, fn = import_named(model, "model", "mypkg.models:build")
    if not callable(fn) or isinstance(fn, (types.ModuleType, type)):
        raise ValueError(f"{model!r} is not a function; it must be "
                         f"function(batch_size, **model_options) -> Workload")
    returns = _return_annotation(fn)
    if returns is not None and not (isinstance(returns, type) and issubclass(returns, Workload)):
        shown = getattr(returns, "__name__", None) or str(returns)
        raise ValueError(f"{model!r} is annotated to return {shown}; a builder must return "
                         f"mutwo.capture.Workload(model, inputs, loss_fn, name)")
    return fn


def _return_annotation(fn: Callable) -> Any:
    """The builder's declared return type, resolved; None when absent or not a plain class (Any, a
    string that does not resolve, a generic): only a definite wrong type is an error."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    returns = hints.get("return")
    return returns if isinstance(returns, type) and returns is not type(None) else None


def check_builder_options(fn: Callable, model: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming an option ``fn(batch_size, **options)`` would not accept (with the
    closest parameter). Builders taking ``**kwargs`` are checked when they are called instead."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    first = next(iter(params), None)  # batch_size, passed by position
    takes = [n for n in names if n not in (first, "device")]
    for key in options:
        if key not in takes:
            close = difflib.get_close_matches(key, takes, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{key!r} is not a parameter of {model!r}; {hint}it takes: "
                             f"{', '.join(takes) or '(no options)'}")
    try:
        inspect.signature(fn).bind(1, **options)
    except TypeError as exc:
        raise ValueError(f"{model!r} cannot be called as {model}(batch_size, **model_options): {exc}") from None


def call_builder(scenario: Scenario, batch_size: int, device: str, source: str = "<scenario>") -> Workload:
    """Build the workload for one batch size, checking a user builder returns a Workload."""
    fn = resolve_builder(scenario.model)
    kwargs = dict(scenario.model_options)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "device" in params:
        kwargs["device"] = device
    try:
        workload = fn(batch_size, **kwargs)
    except TypeError as exc:
        raise ScenarioError(f"{source}: field 'model_options' does not fit {scenario.model!r}: {exc}") from exc
    if not isinstance(workload, Workload):
        raise ScenarioError(f"{source}: field 'model': {scenario.model!r} returned {type(workload).__name__}, "
                            f"expected mutwo.capture.Workload(model, inputs, loss_fn, name)")
    if "device" not in params:
        workload.model.to(device)
        workload.inputs = tuple(x.to(device) if hasattr(x, "to") else x for x in workload.inputs)
    return workload
