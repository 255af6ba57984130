"""The accuracy benchmark end to end at toy size, so a change elsewhere cannot silently break it."""

import importlib.util
import json
import shutil

import pytest

from benchmarks import bench_accuracy

pytestmark = pytest.mark.usefixtures("small_bert")  # tests/conftest.py


def test_toy_run_writes_every_cell_and_resumes(tmp_path, capsys, monkeypatch):
    """One run of every method, its resume, and a second seed on the reused dense model."""
    seen = {"first_batches": [], "descent": [], "hold_masks": [], "mask_lr": []}
    prepare, train = bench_accuracy.mp.prepare, bench_accuracy.train

    def spy_prepare(model, config=None, *a, **k):
        if config is not None and config.target is not None and config.target < 1:
            seen["config"] = config
        return prepare(model, config, *a, **k)

    def spy_train(model, data, *a, **k):
        seen["first_batches"].append(next(iter(data(0)))["input_ids"].clone())
        seen["descent"].append(k.get("descent"))
        seen["hold_masks"].append(k.get("hold_masks"))
        if k.get("mask_lr") is not None:
            seen["mask_lr"].append((k["mask_lr"], bench_accuracy.default_mask_lr(model, a[0], descent=k["descent"])))
        return train(model, data, *a, **k)

    monkeypatch.setattr(bench_accuracy.mp, "prepare", spy_prepare)
    monkeypatch.setattr(bench_accuracy, "train", spy_train)
    methods = ["mlprune", "magnitude"] + (["torch_pruning"] if importlib.util.find_spec("torch_pruning") else [])
    argv = ["--datasets", "rotten_tomatoes", "--targets", "0.5", "1", "--methods", *methods, "dense_more", "--examples", "120",
            "--finetune-steps", "2", "--prune-steps", "4", "--batch-size", "8", "--max-length", "16",
            "--latency-batch", "1", "--latency-seq", "8", "--repeats", "1", "--threads", "1", "--no-progress",
            "--descent", "0.25", "--hold-masks", "--no-output-rows", "--lambda-f", "3e4",
            "--magnitude-prior", "0.5", "--attention-length", "32", "--mask-lr-scale", "3", "--save-models", "--out",
            str(tmp_path)]
    bench_accuracy.main(argv)
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["datasets"]["rotten_tomatoes"]
    assert 0 <= entry["dense"]["test_acc"] <= 1
    assert ("torch-pruning " in results["machine"]) == ("torch_pruning" in methods)
    for method in methods:
        cell = entry["cells"][bench_accuracy.cell_key(method, 0.5)]
        assert "error" not in cell, cell
        assert 0 <= cell["test_acc"] <= 1 and cell["ort_ms"] > 0 and 0 < cell["remaining"] <= 1
    control = entry["cells"][bench_accuracy.cell_key("dense_more", 1.0)]
    assert control["remaining"] == 1.0 and 0 <= control["test_acc"] <= 1
    assert set(entry["cells"]) == {bench_accuracy.cell_key(m, 0.5) for m in methods} | {"dense_more@1"}
    table = (tmp_path / "results.md").read_text()
    assert all(method in table for method in methods + ["dense_more"])
    saved = bench_accuracy.saved_model_path(tmp_path, "rotten_tomatoes", "mlprune", 0.5)
    assert bench_accuracy.mp.load(saved).meta["mlprune_fx"].stage == "converted"
    # the int8 study reads the saved models back: every model scored, its int8 form judged against its parent
    from benchmarks import bench_int8_accuracy

    capsys.readouterr()
    bench_int8_accuracy.main([str(tmp_path), "--threads", "1", "--batch", "1", "--seq", "8", "--rounds", "1",
                              "--repeats", "1", "--activations-per-row"])
    out = capsys.readouterr().out
    assert "0.5 int8, activations per row (torch): test" in out
    for model in ("dense fp32", "dense ORT quantize_dynamic", "dense mlprune_fx int8", "0.5 fp32", "0.5 int8"):
        assert f"| rotten_tomatoes | {model} |" in out
    # mlprune's options reached prepare and train, and the results record them
    assert not seen["config"].prune_output_rows and seen["config"].lambda_f == 3e4
    assert seen["config"].magnitude_prior == 0.5 and results["settings"]["magnitude_prior"] == 0.5
    assert "magnitude prior of 0.5" in table
    assert seen["config"].attention_length == 32 and results["settings"]["attention_length"] == 32
    assert "attention at 32 tokens" in table
    assert len(seen["mask_lr"]) == 1 and seen["mask_lr"][0][0] == pytest.approx(3 * seen["mask_lr"][0][1])
    assert results["settings"]["mask_lr_scale"] == 3 and "mask learning rate 3x the derived one" in table
    assert 0.25 in seen["descent"] and True in seen["hold_masks"]
    assert results["settings"]["descent"] == 0.25 and results["settings"]["output_rows"] is False
    assert results["settings"]["hold_masks"] is True
    assert "descent 0.25" in table and "masks (thresholds and scores) held" in table
    # options that lost their benchmark are recorded at the value every run now has, so old files still compare
    assert (results["settings"]["target_schedule"], results["settings"]["separate_clipping"]) == ("constant", False)
    assert "cubic schedule" not in table and "clipped apart" not in table
    # by default the methods shuffle as the dense run did
    dense_batch = seen["first_batches"][0]
    assert all(bool((b == dense_batch).all()) for b in seen["first_batches"][1:])

    capsys.readouterr()
    bench_accuracy.main(argv + ["--resume"])
    out = capsys.readouterr().out
    assert not any(f"rotten_tomatoes {bench_accuracy.cell_key(m, 0.5)}: remaining" in out for m in methods)  # all kept

    reuse = tmp_path / "reuse"
    again = [a if a != str(tmp_path) else str(reuse) for a in argv]
    again[again.index("--methods") + 1: again.index("--examples")] = ["magnitude"]
    seen["first_batches"].clear()
    bench_accuracy.main(again + ["--prune-steps", "2", "--prune-seed", "1", "--dense-from", str(tmp_path)])
    assert "dense model loaded from" in capsys.readouterr().out
    assert len(seen["first_batches"]) == 1 and not bool((seen["first_batches"][0] == dense_batch).all())
    reused_results = json.loads((reuse / "results.json").read_text())
    reused = reused_results["datasets"]["rotten_tomatoes"]
    assert (reused["dense"]["test_acc"], reused["dense"]["dev_acc"]) == (entry["dense"]["test_acc"], entry["dense"]["dev_acc"])
    assert (results["settings"]["prune_seed"], reused_results["settings"]["prune_seed"]) == (0, 1)
    assert "seed 1" in (reuse / "results.md").read_text()
    assert (reuse / "dense_rotten_tomatoes.pt").exists()
    moved = tmp_path / "moved"  # results carried to a new folder without their dense checkpoint
    moved.mkdir()
    shutil.copy(reuse / "results.json", moved / "results.json")
    trained = len(seen["first_batches"])
    bench_accuracy.main(again[:-1] + [str(moved), "--prune-steps", "2", "--prune-seed", "1", "--resume", "--dense-from", str(tmp_path)])
    assert "dense model loaded from" in capsys.readouterr().out and len(seen["first_batches"]) == trained  # not fine-tuned again
    rebuilt = tmp_path / "rebuilt"  # results restored without any checkpoint: the teacher is fine-tuned again
    rebuilt.mkdir()
    shutil.copy(tmp_path / "results.json", rebuilt / "results.json")
    capsys.readouterr()
    bench_accuracy.main([a if a != str(tmp_path) else str(rebuilt) for a in argv] + ["--resume"])
    assert "the teacher fine-tuned again scores what this folder records" in capsys.readouterr().out
    (rebuilt / "dense_rotten_tomatoes.pt").unlink()
    record = json.loads((rebuilt / "results.json").read_text())
    record["datasets"]["rotten_tomatoes"]["dense"]["test_acc"] += 0.01
    (rebuilt / "results.json").write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="would not share their teacher. Put that teacher's dense_rotten_tomatoes.pt"):
        bench_accuracy.main([a if a != str(tmp_path) else str(rebuilt) for a in argv] + ["--resume"])
    with pytest.raises(SystemExit, match="other settings"):
        bench_accuracy.main(again + ["--finetune-steps", "3", "--dense-from", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="prune_seed"):
        bench_accuracy.main(again + ["--prune-steps", "2", "--resume"])
    with pytest.raises(SystemExit, match="group_by_length"):
        bench_accuracy.main(again + ["--group-by-length", "--dense-from", str(tmp_path), "--out", str(tmp_path / "y")])


def test_group_by_length_batches_with_less_padding():
    from transformers import AutoTokenizer

    from mlprune_fx.tools.data import load_dataset
    from mlprune_fx.tools.models import packaged_model_dir

    splits, tokenizer = load_dataset("rotten_tomatoes", max_examples=200), AutoTokenizer.from_pretrained(packaged_model_dir())
    fed = {}
    for flag in ([], ["--group-by-length"]):
        args = bench_accuracy.parse_args(["--out", "unused", "--methods", "mlprune", "--batch-size", "8", *flag])
        data = bench_accuracy.Data(splits, args, tokenizer, bench_accuracy.torch.device("cpu"))
        fed[bool(flag)] = sum(b["input_ids"].numel() for b in data.train(0))
    assert fed[True] < 0.8 * fed[False]


def test_resume_reads_settings_added_later_as_their_defaults(tmp_path):
    path = tmp_path / "results.json"
    old = {k: 1 for k in bench_accuracy.RESULT_SETTINGS if k not in bench_accuracy.SETTING_DEFAULTS}
    path.write_text(json.dumps({"settings": old, "datasets": {}}))
    args = type("Args", (), {"resume": True})()
    same = {**old, **bench_accuracy.SETTING_DEFAULTS}
    assert bench_accuracy.load_results(path, args, same)["settings"] == old
    with pytest.raises(SystemExit, match="lambda_f"):
        bench_accuracy.load_results(path, args, {**same, "lambda_f": 2e5})
    with pytest.raises(SystemExit, match="descent"):
        bench_accuracy.load_results(path, args, {**same, "descent": 0.3})
    old_seed = {k: v for k, v in old.items() if k != "prune_seed"}
    path.write_text(json.dumps({"settings": old_seed, "datasets": {}}))
    assert bench_accuracy.load_results(path, args, same)["settings"] == old_seed  # prune_seed was the seed
    with pytest.raises(SystemExit, match="prune_seed"):
        bench_accuracy.load_results(path, args, {**same, "prune_seed": 2})


@pytest.mark.parametrize("flags, message", [
    (["--mask-lr-scale", "0"], "must be above 0"),
    (["--mask-lr-scale", "2", "--methods", "mlprune_2step"], "mlprune method only"),
])
def test_bad_mask_lr_scale_is_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        bench_accuracy.parse_args(["--out", "unused", *flags])
    assert message in capsys.readouterr().err
