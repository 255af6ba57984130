"""Plots for the pruning report: what stayed where, how training got there, what it bought."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import fx

from mlprune_fx.core.pruning_state import pruning_state
from mlprune_fx.core.report import sparsity_report

MATRICES = ("Q", "K", "V", "O", "FC1", "FC2")


def kept_table(model: fx.GraphModule) -> tuple[list[str], list[list[float]], list[tuple[int, int]]]:
    """Per layer: remaining fraction of Q, K, V, O, FC1, FC2, and (kept, total) heads."""
    state = pruning_state(model)
    report = {m.weight: m.remaining for m in sparsity_report(model).matrices}
    layers = max(len(state.structure.attention), len(state.structure.ffn))
    names, grid, heads = [], [], []
    for i in range(layers):
        att = state.structure.attention[i] if i < len(state.structure.attention) else None
        ffn = state.structure.ffn[i] if i < len(state.structure.ffn) else None
        sites = [*(att.linears if att else (None,) * 4), *(ffn.linears if ffn else (None,) * 2)]
        grid.append([report.get(s.weight, float("nan")) if s else float("nan") for s in sites])
        names.append(f"layer {i}")
        kept = sparsity_report(model).heads_kept.get(att.name) if att else None
        heads.append(kept if kept else ((att.num_heads, att.num_heads) if att else (0, 0)))
    return names, grid, heads


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_kept(model: fx.GraphModule, path: str | Path) -> Path:
    """Heat map: remaining fraction of each matrix in each layer, kept heads beside it."""
    plt = _pyplot()
    names, grid, heads = kept_table(model)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.6))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(MATRICES)), MATRICES)
    ax.set_yticks(range(len(names)), [f"{n} ({k}/{t} heads)" for n, (k, t) in zip(names, heads)])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:
                ax.text(j, i, f"{value:.0%}", ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, label="weights kept")
    ax.set_title("kept weights per layer and matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_training(steps: Sequence[int], rho: Sequence[float], lam: Sequence[float], target: float, path: str | Path, remaining: Sequence[float] | None = None) -> Path:
    """Remaining ratio (soft rho, and hard if logged) and lambda over training steps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps[: len(rho)], rho, label="rho (regulariser)")
    if remaining:
        ax.plot(steps[: len(remaining)], remaining, label="remaining (hard masks)")
    ax.axhline(target, color="grey", linestyle="--", label=f"target {target:.0%}")
    ax.set_xlabel("step")
    ax.set_ylabel("remaining ratio")
    ax.set_ylim(0, 1.02)
    twin = ax.twinx()
    twin.plot(steps[: len(lam)], lam, color="tab:red", alpha=0.6, label="lambda")
    twin.set_yscale("log")
    twin.set_ylabel("lambda")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_tradeoff(points: Sequence[tuple[str, float, float]], path: str | Path) -> Path:
    """Accuracy against latency, one labelled point per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, latency_ms, acc in points:
        ax.scatter([latency_ms], [acc * 100])
        ax.annotate(label, (latency_ms, acc * 100), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("ONNX Runtime latency (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
