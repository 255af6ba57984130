"""Worker for test_distributed.py (which puts tests/ on PYTHONPATH, for conftest): LEAP training of a prepared tiny BERT on 2 CPU processes (gloo).

Run by torchrun with a comma-separated list of modes, each on its own copy of one prepared model
(one launch and one capture serve them all: starting the ranks costs more than a mode). Mode "loop":
`training.train` on a DistributedDataParallel model; mode "trainer": `LeapTrainer`, which
lets Accelerate wrap the model. Each rank sees different batches; after each mode the ranks
gather their parameters and rank 0 writes, per mode, whether they agree and where the
remaining ratio ended.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.passes.graph_utils import copy_graph_module
from mlprune_fx.training import train

from conftest import example_inputs, tiny_model

TARGET = 0.4
STEPS = 40


def _batches(rank: int) -> list[dict]:
    out = []
    for s in range(4):
        batch = example_inputs(batch=4, seq=10, seed=100 * rank + s)
        batch["labels"] = batch["input_ids"][:, 0] % 2
        out.append(batch)
    return out


def _loop(prepared, rank: int) -> dict:
    ddp = DistributedDataParallel(prepared)  # broadcasts rank 0's weights and masks
    log = train(ddp, _batches(rank), steps=STEPS, lr=1e-4, progress=False)  # mask lr derived from the run
    del ddp  # DDP's reducer must go before its process group, or exit hangs
    return {"before_hold": log.before_hold, "rho_first": log.rho[0]}


def _trainer(prepared, rank: int, out_dir: str) -> dict:
    from transformers import TrainingArguments

    from mlprune_fx.training import LeapTrainer

    rows = [{k: v[i] for k, v in b.items()} for b in _batches(rank) for i in range(len(b["labels"]))]
    args = TrainingArguments(
        output_dir=out_dir, max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-4,
        warmup_steps=4, logging_steps=5, save_strategy="no", report_to=[], use_cpu=True,
        remove_unused_columns=False, disable_tqdm=True, ddp_backend="gloo", seed=0,
    )
    trainer = LeapTrainer(model=prepared, args=args, train_dataset=rows)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rho" in h]
    wrapped = type(trainer.model_wrapped).__name__
    return {"before_hold": logs[-1].get("hold_before"), "rho_first": logs[0]["rho"], "wrapped": wrapped}


def _gather_equal(t: torch.Tensor, world: int) -> bool:
    gathered = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def _run(mode: str, captured, rank: int, world: int, out_dir: str) -> dict:
    prepared = copy_graph_module(captured)
    info = _loop(prepared, rank) if mode == "loop" else _trainer(prepared, rank, out_dir)
    params = torch.cat([p.detach().reshape(-1) for _, p in sorted(prepared.named_parameters())])
    masks = torch.cat([torch.cat([m.scores.detach().reshape(-1), m.threshold.detach().reshape(1)]) for m in mask_modules(prepared).values()])
    return {
        "world": world,
        "params_identical": _gather_equal(params, world),
        "masks_identical": _gather_equal(masks, world),
        "masks_moved": bool(masks.abs().sum() > 0),
        "target": TARGET,
        "remaining": mp.sparsity_report(prepared).remaining,
        **info,
    }


def main(modes: str, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    example = example_inputs(batch=4, seq=10, seed=0)
    example["labels"] = torch.zeros(4, dtype=torch.long)
    captured = mp.prepare(tiny_model("bert", layers=2, seed=rank), mp.PruningConfig(target=TARGET), example)
    results = {}
    for mode in modes.split(","):
        torch.manual_seed(0)
        results[mode] = _run(mode, captured, rank, world, os.path.join(os.path.dirname(out_path), mode))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
