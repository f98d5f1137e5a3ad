"""Built-in workloads, made from code or configs with random weights (nothing is downloaded).

Each builder is ``builder(batch_size, device="cpu", **options) -> Workload``; scenarios name them by
key (``resnet152``, ``bert-base``, ...) or point to a user's own ``module:function`` of the same shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mutwo.capture import Workload

__all__ = ["ZOO", "build_workload", "toy_mlp", "resnet", "bert"]


def _classification_loss(model, x, y):
    return F.cross_entropy(model(x), y)


def toy_mlp(batch_size: int, device: str = "cpu", width: int = 64, depth: int = 4, classes: int = 10,
            seed: int = 0) -> Workload:
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
}


def build_workload(name: str, batch_size: int, device: str = "cpu", **options) -> Workload:
    if name not in ZOO:
        import difflib

        close = difflib.get_close_matches(name, ZOO, n=3)
        raise KeyError(f"unknown model {name!r}; did you mean {close}? available: {sorted(ZOO)}")
    return ZOO[name](batch_size, device=device, **options)
