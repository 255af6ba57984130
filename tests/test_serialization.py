import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mlprune_fx as mp
from mlprune_fx.core.pruning_state import mask_modules

from conftest import example_inputs, logits_of, randomize_masks, tiny_model
from tiny_encoder import TinyEncoder

pytestmark = pytest.mark.usefixtures("native_library")


@pytest.fixture(scope="module")
def prepared():
    inputs = {**example_inputs(), "labels": torch.tensor([0, 1, 1])}
    cfg = mp.PruningConfig(granularity=("head", "row", "block"), block_size=16, target=0.3)
    p = mp.prepare(tiny_model("bert", layers=2), cfg, inputs)
    randomize_masks(p, seed=3, keep=(0.25, 0.6))
    return p.eval()


def test_prepared_model_round_trips_and_keeps_training(tmp_path, prepared):
    mp.save(prepared, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["mlprune.json", "model.safetensors"]
    loaded = mp.load(tmp_path / "ckpt").eval()
    inputs = {**example_inputs(4, 17), "labels": torch.tensor([0, 1, 1, 0])}
    assert torch.equal(logits_of(loaded(**inputs)), logits_of(prepared(**inputs)))
    for k, m in mask_modules(prepared).items():
        assert torch.equal(mask_modules(loaded)[k].scores, m.scores)
    assert loaded.meta["mlprune_fx"].config == prepared.meta["mlprune_fx"].config
    loaded.train()
    (loaded(**inputs).loss + mp.regularization(loaded)).backward()
    assert all(m.threshold.grad is not None for m in mask_modules(loaded).values())


def test_converted_model_round_trips_with_block_sparse_ops(tmp_path, prepared):
    converted = mp.convert(prepared)
    assert converted.meta["mlprune_fx"].lowered
    mp.save(converted, tmp_path / "c")
    loaded = mp.load(tmp_path / "c")
    for b, s in [(1, 5), (3, 13), (5, 40)]:
        x = example_inputs(b, s, seed=s)
        # the reloaded graph is a re-export: GEMM paths may round differently for one row
        torch.testing.assert_close(logits_of(loaded(**x)), logits_of(converted(**x)), atol=1e-6, rtol=0)
    assert mp.sparsity_report(loaded).remaining == mp.sparsity_report(converted).remaining
    path = mp.export_onnx(loaded, tmp_path / "m.onnx", example_inputs())
    assert path.exists()
    kinds = {p.suffix for p in (tmp_path / "c").iterdir()}
    assert kinds == {".json", ".safetensors"}, "no pickle anywhere"


def _sites_read_their_own_weights(gm):
    from mlprune_fx.core.pruning_state import pruning_state

    state, nodes = pruning_state(gm), {n.name: n for n in gm.graph.nodes}
    for lm in state.linears:
        for site in lm.nodes:
            node = nodes[state.renamed.get(site, site)]
            assert node.args[1].target.startswith(lm.site.weight.rpartition(".")[0] + "."), (site, node.args[1].target)


@pytest.mark.parametrize("saved_before_anchors", [False, True])
def test_passes_after_load_find_every_linear_although_export_renamed_the_nodes(tmp_path, prepared, saved_before_anchors):
    """Node names change through torch.export; quantizing a loaded model must still reach each linear's own node."""
    from mlprune_fx.passes.graph_utils import copy_graph_module
    from mlprune_fx.passes.quantize_linears import quantize_linears

    converted = mp.convert(prepared)
    mp.save(converted, tmp_path / "c")
    if saved_before_anchors:  # what an earlier mlprune_fx wrote: the anchors are derived on load instead
        manifest = json.loads((tmp_path / "c" / "mlprune.json").read_text())
        del manifest["site_anchors"]
        (tmp_path / "c" / "mlprune.json").write_text(json.dumps(manifest))
    loaded = mp.load(tmp_path / "c")
    names = {n.name for n in loaded.graph.nodes}
    assert any(n not in names for n in {n.name for n in converted.graph.nodes}), "export kept every name: no test"
    _sites_read_their_own_weights(loaded)
    x = example_inputs(3, 13, seed=1)
    expected = logits_of(quantize_linears(copy_graph_module(converted))(**x))
    torch.testing.assert_close(logits_of(quantize_linears(loaded)(**x)), expected, atol=1e-5, rtol=0)


def test_converted_model_reloads_without_its_class(tmp_path):
    torch.manual_seed(0)
    ids = {"input_ids": torch.randint(0, 50, (3, 9))}
    p = mp.prepare(TinyEncoder(), mp.PruningConfig(), ids)
    randomize_masks(p, seed=1, all_pruned=("blocks_0_q__heads",))
    p.eval()
    converted = mp.convert(p)
    mp.save(converted, tmp_path / "tiny")
    probe = {"input_ids": torch.randint(0, 50, (4, 11))}
    save_file({"input_ids": probe["input_ids"], "expected": converted(**probe).detach()}, str(tmp_path / "probe.safetensors"))
    script = textwrap.dedent(
        f"""
        import sys, torch
        from safetensors.torch import load_file
        import mlprune_fx as mp
        assert "tiny_encoder" not in sys.modules
        model = mp.load({str(tmp_path / "tiny")!r})
        probe = load_file({str(tmp_path / "probe.safetensors")!r})
        out = model(input_ids=probe["input_ids"])
        assert (out - probe["expected"]).abs().max() <= 1e-6, (out - probe["expected"]).abs().max()
        print("reloaded ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "reloaded ok" in result.stdout, result.stderr[-3000:]


def test_hf_converted_model_reloads_in_a_fresh_process(tmp_path, prepared):
    converted = mp.convert(prepared)
    mp.save(converted, tmp_path / "hf")
    probe = example_inputs(2, 9, seed=4)
    save_file({**probe, "expected": converted(**probe).logits.detach()}, str(tmp_path / "probe.safetensors"))
    script = textwrap.dedent(
        f"""
        import sys
        from safetensors.torch import load_file
        import mlprune_fx as mp
        assert "transformers.modeling_outputs" not in sys.modules
        model = mp.load({str(tmp_path / "hf")!r})
        probe = load_file({str(tmp_path / "probe.safetensors")!r})
        expected = probe.pop("expected")
        out = model(**probe)
        assert type(out).__name__ == "SequenceClassifierOutput"
        assert (out.logits - expected).abs().max() <= 1e-6
        print("reloaded ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "reloaded ok" in result.stdout, result.stderr[-3000:]


def test_prepared_model_without_hf_class_cannot_be_saved_whole(tmp_path):
    p = mp.prepare(TinyEncoder(), mp.PruningConfig(), {"input_ids": torch.randint(0, 50, (2, 5))})
    with pytest.raises(mp.CheckpointError, match="cannot be rebuilt without its code"):
        mp.save(p, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_save_needs_a_prepared_or_converted_model(tmp_path):
    with pytest.raises(mp.NotPreparedError):
        mp.save(tiny_model("bert"), tmp_path / "x")


@pytest.fixture
def saved(tmp_path, prepared):
    return mp.save(mp.convert(prepared), tmp_path / "saved")


def test_truncated_weights_give_a_clear_error(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(mp.CheckpointError, match="corrupt or truncated"):
        mp.load(saved)


def test_garbage_weights_give_a_clear_error(saved):
    (saved / "masks.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(mp.CheckpointError, match="corrupt or truncated"):
        mp.load(saved)


def test_format_version_mismatch_gives_a_clear_error(saved):
    manifest = json.loads((saved / "mlprune.json").read_text())
    manifest["format_version"] = 99
    (saved / "mlprune.json").write_text(json.dumps(manifest))
    with pytest.raises(mp.CheckpointError, match="format version 99"):
        mp.load(saved)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(mp.CheckpointError, match="not a folder"):
        mp.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(mp.CheckpointError, match="mlprune.json"):
        mp.load(tmp_path / "empty")


def test_mismatched_prepared_checkpoint_is_refused(tmp_path, prepared):
    path = mp.save(prepared, tmp_path / "p")
    manifest = json.loads((path / "mlprune.json").read_text())
    manifest["source"]["config"]["intermediate_size"] = 96
    (path / "mlprune.json").write_text(json.dumps(manifest))
    with pytest.raises(mp.CheckpointError, match="shape"):
        mp.load(path)


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, prepared, monkeypatch):
    path = mp.save(prepared, tmp_path / "p")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    import mlprune_fx.serialization as ser

    def broken(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ser, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        mp.save(prepared, path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
