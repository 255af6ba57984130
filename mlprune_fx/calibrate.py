"""calibrate: fit the cost model on the deployment machine, from a few pruned variants of the model timed there."""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .convert import convert
from .core.config import PruningConfig, check_quantization
from .core.cost_model import CostModel
from .core.errors import NativeLibraryMissing
from .core.latency import LatencyCounts, latency_counts, output_row_sites
from .core.leap import model_shape
from .core.pruning_state import mask_modules, pruning_state
from .export import export_onnx, input_names
from .passes.graph_utils import copy_graph_module
from .prepare import prepare
from .runtime.timing import cpu_description, session_opener, time_sessions

# (heads kept, FFN rows kept) of the head-and-row variants, and kept-block densities of the block ones:
# enough variety to separate the five terms (each side of the range and each kind of unit alone), few
# enough to stay within two minutes for BERT-base.
HEAD_ROW_VARIANTS = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.1, 0.1))
OUTPUT_ROWS_VARIANT = 0.5  # attention-output and FC2 rows kept, compacted: prices the scatter into the residual
BLOCK_VARIANTS = (0.2, 0.5)
BLOCK_SIZE = 32
# Layers of the slice that is timed: every coefficient is per layer, and exporting and timing a deep model
# whole would cost minutes (BERT-base: 135 s for 12 layers on 2 cores).
SLICE_LAYERS = 4


def _encoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """(parent, attribute, list) of the encoder's layer list: the ModuleList as long as the config's
    num_hidden_layers (or, without a config, the longest list of one module type)."""
    want = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    found = []
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) > 1 and len({type(m) for m in child}) == 1:
                found.append((parent, attr, child))
    if want is not None:
        found = [f for f in found if len(f[2]) == want]
        return found[0] if len(found) == 1 else None
    return max(found, key=lambda f: len(f[2]), default=None)


def _encoder_slice(model: nn.Module, layers: int | None) -> nn.Module:
    """A copy of `model` with only its first `layers` encoder layers (the model itself when it has no more,
    or when its layer list cannot be told apart)."""
    site = _encoder_layers(model)
    if layers is None or site is None or len(site[2]) <= layers:
        return model
    parent, attr, full = site
    setattr(parent, attr, nn.ModuleList(full[:layers]))
    try:
        sliced = copy.deepcopy(model)
    finally:
        setattr(parent, attr, full)
    if getattr(sliced, "config", None) is not None and hasattr(sliced.config, "num_hidden_layers"):
        sliced.config.num_hidden_layers = layers
    return sliced


def keep_random_units(mask, k: int, generator: torch.Generator) -> None:
    """Make a learnable mask keep k random units of its n: random scores, threshold with ceil(sigmoid(T) n) = k."""
    n = mask.scores.numel()
    mask.scores.copy_(torch.randn(mask.scores.shape, generator=generator))
    mask.threshold.fill_(math.log((k - 0.5) / (n - k + 0.5)) if k < n else 20.0)


def _keep(prepared, shares: Mapping[str, float], seed: int):
    """Set every mask whose key ends with a suffix in `shares` to keep that share of its units (random ones)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, mask in mask_modules(prepared).items():
            share = next((v for suffix, v in shares.items() if key.endswith(suffix)), 1.0)
            n = mask.scores.numel()
            keep_random_units(mask, min(n, max(1, round(share * n))), g)
    return prepared.eval()


def _variants(model: nn.Module, example: dict, blocks: bool, seed: int):
    """(name, prepared model with its masks set) for every variant."""
    base = prepare(model, PruningConfig(granularity=("head", "row"), prune_output_rows=False), example)
    for i, (heads, rows) in enumerate(HEAD_ROW_VARIANTS):
        yield f"heads {heads:.0%}, rows {rows:.0%}", _keep(copy_graph_module(base), {"__heads": heads, "__rows": rows}, seed + i)
    scatter_base = prepare(model, PruningConfig(granularity=("row",)), example)
    state = pruning_state(scatter_base)
    sites = output_row_sites(state)
    output_rows = {lm.rows.key: OUTPUT_ROWS_VARIANT for lm in state.linears if lm.site.weight in sites}
    yield f"output rows {OUTPUT_ROWS_VARIANT:.0%}", _keep(scatter_base, output_rows, seed + 50)
    if blocks:
        block_base = prepare(model, PruningConfig(granularity=("block",), block_size=BLOCK_SIZE), example)
        for i, density in enumerate(BLOCK_VARIANTS):
            yield f"blocks {density:.0%}", _keep(copy_graph_module(block_base), {"__blocks": density}, seed + 100 + i)


def _fit(counts: list[LatencyCounts], ms: list[float], batch: int, seq: int) -> np.ndarray:
    """Non-negative least squares on the five unknowns (drop a term the fit drives negative, then refit)."""
    rows = [[c.dense_weights, c.block_weights, c.heads_x_dim * seq, c.hidden_x_layers, c.scattered] for c in counts]
    a = np.array(rows) * batch * seq * 1e-6  # ns per token -> ms for the batch
    t = np.array(ms)
    active = [i for i in range(a.shape[1]) if a[:, i].any()]
    while True:
        scale = a[:, active] / t[:, None]  # relative errors, so the small variants count as much as dense
        x, *_ = np.linalg.lstsq(scale, np.ones(len(t)), rcond=None)
        if (x >= 0).all() or len(active) == 1:
            break
        active = [i for i, v in zip(active, x) if v >= 0]
    coef = np.zeros(a.shape[1])
    coef[active] = np.clip(x, 0, None)
    return coef


def calibrate(
    model: nn.Module,
    example_inputs: Mapping[str, torch.Tensor] | None = None,
    *,
    batch: int = 8,
    seq: int = 128,
    threads: int | None = None,
    quantize: str | None = None,
    blocks: bool = True,
    rounds: int = 3,
    runs: int = 3,
    layers: int | None = SLICE_LAYERS,
    seed: int = 0,
    progress: bool = True,
) -> CostModel:
    """Fit a `CostModel` for `model` on this machine: convert a few pruned variants (heads, FFN rows, output
    rows compacted, and block-sparse matrices at two densities, random units), time each in ONNX Runtime at
    batch x seq, one session open at a time, and fit the cost model's five coefficients to the times.

    quantize: fit for `convert(..., quantize=...)`'s models. blocks: include the block-sparse variants
    (they need the native library; without it the block terms are left out, with a warning).
    threads: ONNX Runtime intra-op threads, as the model will be served. layers: time a copy with only the
    first `layers` encoder layers (every coefficient is per layer or per weight; None: the whole model).
    The model is left untouched.
    """
    check_quantization(quantize)
    if blocks:
        try:
            from .runtime.ops import load_library

            load_library()
        except NativeLibraryMissing as exc:
            warnings.warn(f"calibrating without block-sparse variants: {exc}", stacklevel=2)
            blocks = False
    was_training = model.training
    timed = _encoder_slice(model, layers)
    variants = list(_variants(timed, dict(example_inputs) if example_inputs is not None else None, blocks, seed))
    model.train(was_training)
    names, counts, paths = [], [], {}
    with tempfile.TemporaryDirectory(prefix="mlprune-calibrate-") as tmp:
        bar = tqdm(variants, desc="calibrate: export", disable=not progress, leave=False)
        feeds = None
        for i, (name, prepared) in enumerate(bar):
            counts.append(latency_counts(prepared, max_block_density=1.0))
            converted = convert(prepared, max_block_density=1.0, quantize=quantize, compact_output_rows=True)
            feeds = feeds or _feeds(converted, timed, batch, seq, seed)
            small = {k: v[:2, :16] for k, v in feeds.items()}
            paths[name] = export_onnx(converted, Path(tmp) / f"{i}.onnx", small)
            names.append(name)
        arrays = {k: v.numpy() for k, v in feeds.items()}
        ms = time_sessions({n: session_opener(p, arrays, threads) for n, p in paths.items()}, rounds=rounds, runs=runs,
                           warmup=1)
    coef = _fit(counts, [ms[n] for n in names], batch, seq)
    model_info = model_shape(pruning_state(variants[0][1]))
    layers_timed = model_info["layers"]
    if timed is not model:
        model_info["layers"] = len(_encoder_layers(model)[2])
    share = model_info["layers"] / layers_timed  # the whole model's counts over the timed slice's
    dense = counts[0]

    def model_with(fit: dict) -> CostModel:
        return CostModel(max(float(coef[0]), 1e-9), float(coef[1]), float(coef[2]), float(coef[3]), float(coef[4]),
                         batch=batch, seq=seq, threads=threads, quantize=quantize, machine=cpu_description(),
                         model=model_info, fit=fit)

    fitted = model_with({})
    errors = [abs(c.ms(fitted) - ms[n]) / ms[n] for c, n in zip(counts, names)]
    whole = LatencyCounts(dense.dense_weights * share, 0.0, dense.heads_x_dim * share, dense.hidden_x_layers * share)
    fit = {"max_error": max(errors), "mean_error": sum(errors) / len(errors), "dense_ms": whole.ms(fitted),
           "layers_timed": layers_timed}
    return model_with({**fit, **{f"ms {n}": ms[n] for n in names}})


def _feeds(converted, model: nn.Module, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab - 1), vocab, (batch, seq), generator=g)
    every = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {name: every[name] for name in input_names(converted)}
