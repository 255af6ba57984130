"""Baselines that bench_accuracy.py holds mlprune_fx against, on the same encoder weights.

- magnitude: global unstructured L1 pruning of every encoder linear (torch.nn.utils.prune),
  masks held while fine-tuning. It keeps exactly the asked share, but the zeros stay in
  dense matrices, so ONNX Runtime runs it at the dense model's speed.
- torch_pruning: Torch-Pruning's dependency-graph pruner removing whole attention heads and
  FFN channels, leaving the hidden size (the residual stream) alone, so the result is a
  smaller dense model, like what mlprune_fx's head + row `convert` produces.

"Encoder linears" are the six matrices of every layer that mlprune_fx's sparsity report
counts: Q, K, V, attention output, FC1 and FC2.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

ROLES = ("query", "key", "value", "attn_out", "fc1", "fc2")


def _layers(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise TypeError(
            f"{type(model).__name__} has no `encoder.layer` list: the baselines expect the Hugging Face "
            "BERT layout (BertModel / BertFor*)"
        )
    return list(layers)


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """{'<layer>.<role>': linear} for Q, K, V, attention output, FC1, FC2 of every layer."""
    out = {}
    for i, layer in enumerate(_layers(model)):
        try:
            mods = (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                    layer.attention.output.dense, layer.intermediate.dense, layer.output.dense)
        except AttributeError as e:
            raise TypeError(f"encoder layer {i} is not a BERT layer ({e}); the baselines expect BertLayer") from e
        out.update({f"{i}.{role}": m for role, m in zip(ROLES, mods)})
    return out


def encoder_weight_count(model: nn.Module, nonzero: bool = False) -> int:
    """Elements (or nonzero elements) of the encoder linears' weights; the remaining ratio's numerator."""
    weights = [m.weight for m in encoder_linears(model).values()]
    return int(sum(int(torch.count_nonzero(w)) if nonzero else w.numel() for w in weights))


def stored_parameters(model: nn.Module) -> int:
    """Floating-point parameters and buffers: what the model stores, zeros included."""
    tensors = list(model.parameters()) + list(model.buffers())
    return int(sum(t.numel() for t in tensors if t.is_floating_point()))


# --- magnitude -------------------------------------------------------------------------------


def magnitude_prune(model: nn.Module, remaining: float) -> list[tuple[nn.Module, str]]:
    """Zero the smallest |w| across all encoder linears at once so that `remaining` of them stay.

    Uses torch's reparametrisation (weight = weight_orig * weight_mask), so fine-tuning
    afterwards keeps the pruned weights at zero. Returns what `magnitude_finish` removes.
    """
    if not 0 < remaining <= 1:
        raise ValueError(f"remaining={remaining} must lie in (0, 1]")
    params = [(m, "weight") for m in encoder_linears(model).values()]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=1.0 - remaining)
    return params


def magnitude_finish(params: list[tuple[nn.Module, str]]) -> None:
    """Bake the masks into plain weights (the zeros stay), dropping the reparametrisation hooks."""
    for module, name in params:
        prune.remove(module, name)


# --- Torch-Pruning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StructurePlan:
    """Heads and FFN channels every layer keeps, and the share of encoder weights that leaves."""

    heads: int
    ffn: int
    remaining: float


def plan_structure(remaining: float, hidden: int, heads: int, head_dim: int, ffn: int) -> StructurePlan:
    """Uniform per-layer sizes whose kept encoder weights come closest to `remaining`.

    Heads follow the target (at least one), then the FFN width absorbs the rounding of the
    head count, so the total lands within one FFN channel of the target.
    Per layer: Q, K, V, O hold 4 * hidden * head_dim * heads weights, FC1 + FC2 2 * hidden * ffn.
    """
    if not 0 < remaining <= 1:
        raise ValueError(f"remaining={remaining} must lie in (0, 1]")
    total = 4 * hidden * head_dim * heads + 2 * hidden * ffn
    best = None
    for k in sorted({max(1, math.floor(remaining * heads)), max(1, round(remaining * heads)),
                     min(heads, max(1, math.ceil(remaining * heads)))}):
        attn = 4 * hidden * head_dim * k
        f = min(ffn, max(1, round((remaining * total - attn) / (2 * hidden))))
        kept = (attn + 2 * hidden * f) / total
        # closest to the target; among ties, the head share closest to the target's
        key = (round(abs(kept - remaining), 9), abs(k / heads - remaining))
        if best is None or key < best[0]:
            best = (key, StructurePlan(k, f, kept))
    return best[1]


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [layer.attention.self for layer in _layers(model)]


def torch_pruning_prune(
    model: nn.Module,
    remaining: float,
    example_inputs: Mapping[str, torch.Tensor],
) -> StructurePlan:
    """Remove whole heads and FFN channels in place with Torch-Pruning's MetaPruner (L2 group magnitude).

    Attention output and FC2 are ignored as roots (they would prune the residual stream),
    as are the pooler and the classifier; the dependency graph still narrows their input
    columns to match the heads and channels removed. Tracing runs under eager attention
    (matmul / softmax / matmul, whose channel coupling Torch-Pruning models); the model's
    own attention implementation is restored afterwards. Torch-Pruning does not update the
    modules' head counts, so this sets `num_attention_heads` and `all_head_size` itself.
    """
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise ImportError(
            "the torch_pruning baseline needs Torch-Pruning: pip install 'torch-pruning>=1.5' "
            "(or the package's `bench` extra)"
        ) from e
    # renamed from GroupNormImportance in later 1.x releases
    importance = getattr(tp.importance, "GroupMagnitudeImportance", None) or tp.importance.GroupNormImportance
    config = model.config
    attn = _attention_modules(model)
    heads = attn[0].num_attention_heads
    head_dim = attn[0].attention_head_size
    layers = _layers(model)
    ffn = layers[0].intermediate.dense.out_features
    plan = plan_structure(remaining, config.hidden_size, heads, head_dim, ffn)

    num_heads = {m: a.num_attention_heads for a in attn for m in (a.query, a.key, a.value)}
    ratios = {}
    for layer in layers:
        # A ratio > 0 is needed on the attention group too, or MetaPruner skips its head step.
        ratios[layer.attention.self.query] = max(0.0, 1.0 - (plan.heads + 0.5) / heads)
        # local pruning removes len - int(len * (1 - ratio)) channels: the +0.5 makes that exact
        ratios[layer.intermediate.dense] = max(0.0, 1.0 - (plan.ffn + 0.5) / ffn)
    ignored = [layer.attention.output.dense for layer in layers] + [layer.output.dense for layer in layers]
    ignored += [m for m in (getattr(model.base_model, "pooler", None), getattr(model, "classifier", None)) if m is not None]
    inputs = {k: v for k, v in example_inputs.items() if k != "labels"}

    impl = config._attn_implementation
    was_training = model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs=inputs,
            importance=importance(p=2),
            global_pruning=False,
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios,
            ignored_layers=ignored,
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=max(0.0, (heads - plan.heads - 0.5) / heads),  # ceil() of it * heads is exact
            output_transform=lambda out: out.logits.sum(),
        )
        pruner.step()
    finally:
        model.set_attn_implementation(impl)
        model.train(was_training)

    for a in attn:
        a.num_attention_heads = a.query.out_features // a.attention_head_size
        a.all_head_size = a.query.out_features
    got_heads = {a.num_attention_heads for a in attn}
    got_ffn = {layer.intermediate.dense.out_features for layer in layers}
    hidden = {m.out_features for layer in layers for m in (layer.attention.output.dense, layer.output.dense)}
    if got_heads != {plan.heads} or got_ffn != {plan.ffn} or hidden != {config.hidden_size}:
        raise RuntimeError(
            f"Torch-Pruning left heads {sorted(got_heads)}, FFN widths {sorted(got_ffn)} and hidden sizes "
            f"{sorted(hidden)}; the plan was {plan.heads} heads, {plan.ffn} channels, hidden {config.hidden_size}"
        )
    return plan


def _kept_rows(pruned: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Indices of the dense rows that the pruned matrix kept (rows are copied, not changed)."""
    idx = torch.cdist(pruned.float(), dense.float()).argmin(1)
    if not torch.equal(dense[idx], pruned):
        raise RuntimeError("the pruned weights are not rows of the dense ones")
    return idx


@torch.no_grad()
def structural_error(dense: nn.Module, pruned: nn.Module, inputs: Mapping[str, torch.Tensor]) -> float:
    """Max |logit difference| between `pruned` and `dense` with the same heads / channels zeroed.

    A head whose V rows (and bias) are zero contributes nothing, and neither does an FFN
    channel whose FC1 row and bias are zero (GELU(0) = 0); so if Torch-Pruning removed exactly
    whole heads and channels, consistently across Q, K, V, O and FC1, FC2, the two agree.
    Checks as well that Q, K and V kept the same heads and O kept the matching columns.
    """
    masked = copy.deepcopy(dense).eval()
    for dl, pl, ml in zip(_layers(dense), _layers(pruned), _layers(masked)):
        d_att, p_att = dl.attention.self, pl.attention.self
        head_dim = d_att.attention_head_size
        rows = {n: _kept_rows(getattr(p_att, n).weight, getattr(d_att, n).weight) for n in ("query", "key", "value")}
        if not (torch.equal(rows["query"], rows["key"]) and torch.equal(rows["query"], rows["value"])):
            raise RuntimeError("Torch-Pruning kept different heads in Q, K and V")
        kept_heads = rows["query"].view(-1, head_dim)[:, 0] // head_dim
        expect = (kept_heads[:, None] * head_dim + torch.arange(head_dim, device=kept_heads.device)).flatten()
        if not torch.equal(rows["query"], expect):
            raise RuntimeError("Torch-Pruning removed parts of heads, not whole heads")
        cols = _kept_rows(pl.attention.output.dense.weight.t(), dl.attention.output.dense.weight.t())
        if not torch.equal(cols, rows["value"]):
            raise RuntimeError("the attention output's kept columns do not match the kept heads")
        drop = torch.ones(d_att.query.out_features, dtype=torch.bool, device=cols.device)
        drop[rows["value"]] = False
        ml.attention.self.value.weight[drop] = 0
        ml.attention.self.value.bias[drop] = 0
        fc1 = _kept_rows(pl.intermediate.dense.weight, dl.intermediate.dense.weight)
        fc2 = _kept_rows(pl.output.dense.weight.t(), dl.output.dense.weight.t())
        if not torch.equal(fc1, fc2):
            raise RuntimeError("FC1's kept rows and FC2's kept columns differ")
        drop = torch.ones(dl.intermediate.dense.out_features, dtype=torch.bool, device=fc1.device)
        drop[fc1] = False
        ml.intermediate.dense.weight[drop] = 0
        ml.intermediate.dense.bias[drop] = 0
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    was = pruned.training
    pruned.eval()
    try:
        diff = (pruned(**inputs).logits - masked(**inputs).logits).abs().max()
    finally:
        pruned.train(was)
    return float(diff)
