"""The `mlprune` command line on a tiny BERT and a tiny CSV."""

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from mlprune_fx.core.pruning_state import mask_modules
from mlprune_fx.serialization import load
from mlprune_fx.tools.cli import main
from mlprune_fx.tools.models import packaged_model_dir

pytestmark = pytest.mark.usefixtures("native_library")

WORDS = ["good", "bad", "great", "awful", "fine", "dull", "fun", "slow"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_hf")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(60):
            writer.writerow([f"a {WORDS[i % 8]} film number {i}", "pos" if i % 2 == 0 else "neg"])
    return path


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_the_whole_flow_on_a_run_folder(tmp_path, tiny_hf, tiny_csv, capsys):
    r = tmp_path / "run"
    data = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16"]
    assert run("finetune", "--run", r, "--model", tiny_hf, "--steps", "3", "--batch-size", "8", "--quiet", *data) == 0
    assert (r / "dense" / "config.json").exists() and json.loads((r / "data.json").read_text())["text_column"] == "review"
    assert run("prune", "--run", r, "--steps", "6", "--batch-size", "8", "--target", "0.5", "--quiet") == 0
    prune = json.loads((r / "prune.json").read_text())
    assert abs(prune["remaining"] - 0.5) < 0.1 and prune["group_by_length"] is True
    assert 0 <= prune["dev_accuracy"] <= 1 and len(prune["logs"][0]["accuracy"]) == 6
    assert run("convert", "--run", r, "--quantize", "int8") == 0
    convert = json.loads((r / "convert.json").read_text())
    assert convert["quantize"] == "int8" and 0 <= convert["int8_vs_fp32_max_logit_difference"] < 0.5
    assert run("export", "--run", r) == 0
    assert all((r / f).exists() for f in ("model.onnx", "dense.onnx", "dense_ort_int8.onnx"))
    assert run("evaluate", "--run", r) == 0
    accuracy = json.loads((r / "evaluate.json").read_text())["accuracy"]
    assert set(accuracy) == {"dense", "dense_ort_int8", "pruned", "pruned_onnx"}
    assert accuracy["pruned"] == pytest.approx(accuracy["pruned_onnx"], abs=0.1)
    assert run("bench", "--run", r, "--batch", "2", "--seq", "16", "--repeats", "2") == 0
    assert set(json.loads((r / "bench.json").read_text())["ms"]) == {"dense", "dense_ort_int8", "pruned"}
    assert run("report", "--run", r) == 0
    report = (r / "report.md").read_text()
    assert "kept.png" in report and (r / "kept.png").exists() and (r / "training_0.png").exists()
    assert "prune --model" not in report and "quantize_dynamic" in report and "pruned, int8" in report
    out = capsys.readouterr().out
    assert "speed-up" in out and "over it through quantize_dynamic" in out
    from mlprune_fx.tools.demo import summary_table

    table = summary_table(r)
    assert "dense, ONNX Runtime quantize_dynamic" in table and "mlprune_fx: pruned + int8" in table


def test_steps_refuse_to_go_on_from_out_of_date_outputs(tmp_path, tiny_hf, tiny_csv, capsys):
    r = tmp_path / "run"
    data = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    prune = ["prune", "--run", r, "--steps", "3", "--batch-size", "8", "--quiet"]
    assert run("finetune", "--run", r, "--model", tiny_hf, "--steps", "2", "--batch-size", "8", *data) == 0
    assert run(*prune, "--target", "0.5") == 0 and run("convert", "--run", r) == 0 and run("export", "--run", r) == 0
    assert run("bench", "--run", r, "--batch", "2", "--seq", "16", "--repeats", "1", "--rounds", "1") == 0
    assert run(*prune, "--target", "0.3") == 0  # converted/ and model.onnx now hold the 0.5 model
    capsys.readouterr()
    for step in ("evaluate", "bench", "report", "export"):
        assert run(step, "--run", r) == 2
        assert "run `mlprune convert" in capsys.readouterr().err
    parameters = {}
    for flag in ("--keep-output-rows", "--compact-output-rows"):
        assert run("convert", "--run", r, flag) == 0
        parameters[flag] = json.loads((r / "convert.json").read_text())["parameters"]
    assert parameters["--compact-output-rows"] < parameters["--keep-output-rows"]
    assert run("convert", "--run", r) == 0
    assert run("evaluate", "--run", r) == 2 and "run `mlprune export" in capsys.readouterr().err
    assert run("export", "--run", r) == 0 and run("evaluate", "--run", r) == 0
    assert run("report", "--run", r) == 2 and "run `mlprune bench" in capsys.readouterr().err
    assert run("finetune", "--run", r, "--steps", "1", "--batch-size", "8", "--quiet") == 0
    assert run("convert", "--run", r) == 2 and "run `mlprune prune" in capsys.readouterr().err


def test_the_dense_reference_is_the_model_prune_started_from(tmp_path, tiny_hf, tiny_csv):
    r = tmp_path / "run"
    data = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    assert run("finetune", "--run", r, "--model", tiny_hf, "--steps", "3", "--batch-size", "8", *data) == 0
    # RUN/dense now holds a fine-tuned model, but this prune starts from the untrained one
    assert run("prune", "--run", r, "--model", tiny_hf, "--steps", "2", "--batch-size", "8", "--target", "0.5", "--quiet") == 0
    assert json.loads((r / "prune.json").read_text())["model"] == str(Path(tiny_hf).resolve())
    assert run("convert", "--run", r) == 0 and run("export", "--run", r) == 0 and run("evaluate", "--run", r) == 0
    evaluate = json.loads((r / "evaluate.json").read_text())
    assert evaluate["dense_model"] == str(Path(tiny_hf).resolve())
    assert set(evaluate["from"]) == {"prune", "convert", "export"}
    assert set(json.loads((r / "export.json").read_text())["from"]) == {"convert", "prune"}
    assert run("report", "--run", r) == 0
    assert f"`{Path(tiny_hf).resolve()}`" in (r / "report.md").read_text()
    assert run("finetune", "--run", r, "--steps", "1", "--batch-size", "8", "--quiet") == 0
    assert run("evaluate", "--run", r) == 0  # a new RUN/dense is not what this prune used


def test_same_seed_same_fine_tuned_model(tmp_path, tiny_hf, tiny_csv):
    from safetensors.torch import load_file

    data = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16"]
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 7 + ord(name))  # whatever the caller's RNG state, the seed decides
        assert run("finetune", "--run", tmp_path / name, "--model", tiny_hf, "--steps", "3", "--batch-size", "8", "--quiet", *data) == 0
    a, b = (load_file(tmp_path / n / "dense" / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_prune_resumes_from_the_run_checkpoint(tmp_path, tiny_hf, tiny_csv, monkeypatch):
    import mlprune_fx.training.loop as loop

    r = tmp_path / "run"
    args = ["--model", tiny_hf, "--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment",
            "--max-length", "16", "--batch-size", "8", "--steps", "6", "--save-every", "2", "--quiet"]
    real_store = loop.store_run
    calls = []

    def store_then_stop(folder, step, *rest):
        real_store(folder, step, *rest)
        calls.append(step)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "store_run", store_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run("prune", "--run", r, *args)
    monkeypatch.setattr(loop, "store_run", real_store)
    assert run("prune", "--run", r, *args, "--resume") == 0
    assert json.loads((r / "prune.json").read_text())["logs"][0]["steps"][-1] == 5
    assert calls == [2, 4]


def test_resume_without_a_checkpoint_is_refused(tmp_path, tiny_hf, tiny_csv, capsys):
    args = ["--model", tiny_hf, "--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--steps", "2"]
    assert run("prune", "--run", tmp_path / "r", *args, "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_prune_from_a_config_file_with_blocks(tmp_path, tiny_hf, tiny_csv):
    r = tmp_path / "run"
    config = tmp_path / "prune.json"
    config.write_text(json.dumps({"target": 0.6, "granularity": ["head", "row", "block"], "block_size": 16, "steps": 4}))
    args = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    assert run("prune", "--run", r, "--model", tiny_hf, "--config", config, "--batch-size", "8", "--no-group-by-length", *args) == 0
    saved = json.loads((r / "prune.json").read_text())
    assert saved["config"]["granularity"] == ["head", "row", "block"] and saved["steps"] == 4
    assert saved["group_by_length"] is False


def test_keep_output_rows_leaves_the_hidden_width_whole(tmp_path, tiny_hf, tiny_csv):
    r = tmp_path / "run"
    args = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    assert run("prune", "--run", r, "--model", tiny_hf, "--target", "0.3", "--steps", "3", "--keep-output-rows", "--batch-size", "8", *args) == 0
    assert json.loads((r / "prune.json").read_text())["config"]["prune_output_rows"] is False
    masks = mask_modules(load(r / "prepared"))
    assert len(masks) == 4 and {m.granularity for m in masks.values()} == {"head", "row"}  # per layer: heads, FFN rows


def test_hold_masks_magnitude_prior_and_attention_length_from_flags_or_config(tmp_path, tiny_hf, tiny_csv, monkeypatch, capsys):
    import mlprune_fx.tools.cli.train_commands as commands

    held = []
    real_train = commands.train
    monkeypatch.setattr(commands, "train", lambda *a, **kw: held.append(kw["hold_masks"]) or real_train(*a, **kw))
    args = ["--model", tiny_hf, "--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment",
            "--max-length", "16", "--batch-size", "8", "--steps", "2", "--target", "0.5", "--quiet"]
    r = tmp_path / "flags"
    assert run("prune", "--run", r, *args, "--hold-masks", "--magnitude-prior", "1", "--attention-length", "16") == 0
    out = capsys.readouterr().out
    assert "of the work at 16 tokens, predicted" in out and "(target 50%)" in out
    saved = json.loads((r / "prune.json").read_text())
    assert held == [True] and saved["hold_masks"] is True and saved["config"]["magnitude_prior"] == 1
    assert saved["config"]["attention_length"] == 16 and load(r / "prepared").meta["mlprune_fx"].config.attention_length == 16
    config = tmp_path / "prune.json"
    config.write_text(json.dumps({"hold_masks": True, "magnitude_prior": 0.5, "attention_length": 64}))
    r = tmp_path / "config"
    assert run("prune", "--run", r, *args, "--config", config) == 0
    assert held == [True, True] and json.loads((r / "prune.json").read_text())["config"]["magnitude_prior"] == 0.5
    assert json.loads((r / "prune.json").read_text())["config"]["attention_length"] == 64
    assert run("prune", "--run", tmp_path / "bad", *args, "--attention-length", "0") == 2
    assert run("prune", "--run", tmp_path / "default", *args) == 0
    assert held == [True, True, False]


def test_two_step_prune_flow_uses_the_flags_and_config(tmp_path, tiny_hf, tiny_csv, monkeypatch, capsys):
    import mlprune_fx.training.two_step as pipeline

    seen = {"configs": [], "lr": []}
    real_prepare, real_train = pipeline.prepare, pipeline.train

    def spy_prepare(model, cfg, *rest, **kw):
        seen["configs"].append(cfg)
        return real_prepare(model, cfg, *rest, **kw)

    def spy_train(*rest, **kw):
        seen["lr"].append((kw["lr"], kw["mask_lr"]))
        return real_train(*rest, **kw)

    monkeypatch.setattr(pipeline, "prepare", spy_prepare)
    monkeypatch.setattr(pipeline, "train", spy_train)
    r = tmp_path / "run"
    config = tmp_path / "prune.json"
    config.write_text(json.dumps({"lambda_f": 1000, "magnitude_prior": 0.5, "mask_lr": 0.02}))
    data = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    assert run("finetune", "--run", r, "--model", tiny_hf, "--steps", "2", "--batch-size", "8", *data) == 0
    assert run("prune", "--run", r, "--two-step", "--r1", "0.6", "--r2", "0.5", "--block-size", "16", "--steps", "4",
               "--steps2", "4", "--lr", "2e-3", "--config", config, "--batch-size", "8", "--quiet") == 0
    assert [(c.target, c.granularity) for c in seen["configs"]] == [(0.6, ("head", "row")), (0.5, ("block",))]
    assert all(c.lambda_f == 1000 and c.magnitude_prior == 0.5 and c.block_size == 16 for c in seen["configs"])
    assert seen["lr"] == [(2e-3, 0.02)] * 2
    record = json.loads((r / "prune.json").read_text())
    assert record["mode"] == "two-step" and len(record["logs"]) == 2 and record["lr"] == 2e-3
    assert 0 <= record["dev_accuracy"] <= 1
    assert record["config"]["lambda_f"] == 1000 and "target" not in record["config"]
    assert run("convert", "--run", r) == 0
    assert "nothing to convert" in capsys.readouterr().out
    assert run("convert", "--run", r, "--no-lower-blocks") == 2
    assert "one-step runs" in capsys.readouterr().err
    assert run("export", "--run", r) == 0 and run("evaluate", "--run", r) == 0
    accuracy = json.loads((r / "evaluate.json").read_text())["accuracy"]
    assert accuracy["pruned"] == pytest.approx(accuracy["pruned_onnx"], abs=0.1)
    assert run("report", "--run", r) == 0 and (r / "training_1.png").exists()
    # the two-step model, already converted by prune, quantized by convert, then again by nothing
    assert run("convert", "--run", r, "--quantize", "int8") == 0
    assert run("convert", "--run", r, "--quantize", "int8") == 0 and "already int8" in capsys.readouterr().out
    assert run("export", "--run", r) == 0 and run("evaluate", "--run", r) == 0
    accuracy = json.loads((r / "evaluate.json").read_text())["accuracy"]
    assert accuracy["pruned"] == pytest.approx(accuracy["pruned_onnx"], abs=0.1)


def test_distilled_prune_matches_hidden_states_and_serves_logits_only(tmp_path, tiny_hf, tiny_csv, recwarn):
    import onnx

    r = tmp_path / "run"
    data = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    assert run("finetune", "--run", r, "--model", tiny_hf, "--steps", "2", "--batch-size", "8", *data) == 0
    assert run("prune", "--run", r, "--distill", "--target", "0.5", "--steps", "3", "--batch-size", "8", "--quiet") == 0
    record = json.loads((r / "prune.json").read_text())
    assert all("hidden" in parts for parts in record["logs"][0]["kd"])
    assert not [w for w in recwarn if "logits only" in str(w.message)]
    assert run("convert", "--run", r) == 0 and run("export", "--run", r) == 0
    assert [o.name for o in onnx.load(r / "model.onnx").graph.output] == ["logits"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "0.3"], "drop --target"),
        (["--granularity", "block"], "drop --granularity"),
        (["--config", "CONFIG"], "'target' in --config"),
        (["--resume"], "one-step pruning only"),
    ],
)
def test_two_step_refuses_what_it_would_ignore(tmp_path, tiny_hf, tiny_csv, extra, message, capsys):
    config = tmp_path / "prune.json"
    config.write_text(json.dumps({"target": 0.3}))
    extra = [config if a == "CONFIG" else a for a in extra]
    args = ["--model", tiny_hf, "--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--quiet"]
    assert run("prune", "--run", tmp_path / "r", "--two-step", *extra, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "tokenizer").exists()  # refused before any work


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert"], "run `mlprune prune"),
        (["export"], "run `mlprune convert"),
        (["bench"], "run `mlprune export"),
        (["report"], "holds no results"),
        (["finetune", "--model", "/no/such/model", "--steps", "1"], "could not load a model"),
        (["finetune", "--data", "/no/such/file.csv", "--steps", "1"], "file.csv"),
        (["prune", "--data", "nonexistent_dataset_name"], "nonexistent_dataset_name"),
    ],
)
def test_bad_paths_give_clear_errors(tmp_path, argv, message, capsys):
    assert run(argv[0], "--run", tmp_path / "r", *argv[1:]) == 2
    assert message in capsys.readouterr().err


def test_bad_column_names_the_columns_that_exist(tmp_path, tiny_hf, tiny_csv, capsys):
    code = run("finetune", "--run", tmp_path / "r", "--model", tiny_hf, "--data", tiny_csv, "--text-column", "txt", "--steps", "1")
    assert code == 2
    err = capsys.readouterr().err
    assert "txt" in err and "review" in err


def test_bad_pruning_config_is_reported(tmp_path, tiny_hf, tiny_csv, capsys):
    args = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16"]
    assert run("prune", "--run", tmp_path / "r", "--model", tiny_hf, "--target", "1.5", *args) == 2
    assert "target=1.5 is outside (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "settings, message",
    [({"lamda_f": 1000}, "unknown field(s) lamda_f"), ({"steps": 2.5}, "steps=2.5 must be a positive integer"),
     ({"lr": "fast"}, "lr='fast' must be a positive number"), ({"hold_masks": "yes"}, "hold_masks='yes' must be true or false")],
)
def test_bad_config_file_fields_are_refused(tmp_path, settings, message, capsys):
    config = tmp_path / "prune.json"
    config.write_text(json.dumps(settings))
    assert run("prune", "--run", tmp_path / "r", "--config", config) == 2
    assert message in capsys.readouterr().err


def test_flags_override_the_config_file(tmp_path, tiny_hf, tiny_csv):
    r = tmp_path / "run"
    config = tmp_path / "prune.json"
    config.write_text(json.dumps({"target": 0.6, "steps": 9, "lr": 1e-3}))
    args = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    assert run("prune", "--run", r, "--model", tiny_hf, "--config", config, "--steps", "3", "--target", "0.5",
               "--batch-size", "8", *args) == 0
    saved = json.loads((r / "prune.json").read_text())
    assert (saved["steps"], saved["lr"], saved["config"]["target"]) == (3, 1e-3, 0.5)


@pytest.mark.parametrize("size", ["8", "64"])
def test_a_block_size_the_kernel_does_not_run_is_a_clear_error(tmp_path, tiny_csv, capsys, size):
    args = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--quiet"]
    assert run("prune", "--run", tmp_path / "r", "--granularity", "block", "--block-size", size, *args) == 2
    err = capsys.readouterr().err
    assert f"mlprune prune: error: bad pruning config: block_size={size} is not supported: use one of (16, 32)" in err
    assert "Traceback" not in err


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert run("finetune", "--run", tmp_path / "r", "--device", "cuda") == 2
    assert "--device cpu" in capsys.readouterr().err


def test_help_teaches_the_flow(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("finetune", "prune", "convert", "export", "evaluate", "bench", "report"):
        assert f"mlprune {command}" in text


def test_calibrate_then_prune_to_a_speedup(tmp_path, tiny_hf, tiny_csv, capsys):
    r = tmp_path / "run"
    data = ["--data", tiny_csv, "--text-column", "review", "--label-column", "sentiment", "--max-length", "16", "--quiet"]
    assert run("calibrate", "--run", r, "--model", tiny_hf, "--batch", "2", "--seq", "16", "--threads", "1",
               "--no-blocks", "--quiet") == 0
    assert (r / "cost_model.json").exists() and "cost model in" in capsys.readouterr().out
    # A 0.1 ms model's timings are noise (they can fit weight_ns = 0): fixed coefficients keep prune deterministic.
    fitted = json.loads((r / "cost_model.json").read_text())
    fitted.update(weight_ns=0.1, block_weight_ns=0.1, head_ns=1.0, fixed_ns=1.0)
    (r / "cost_model.json").write_text(json.dumps(fitted))
    assert run("prune", "--run", r, "--model", tiny_hf, "--steps", "4", "--batch-size", "8", "--speedup", "1.3", *data) == 0
    record = json.loads((r / "prune.json").read_text())
    assert record["config"]["speedup"] == 1.3 and record["config"]["target"] is None
    assert record["config"]["cost_model"]["model"]["hidden"] == 32 and record["predicted_speedup"] > 1
    assert "predicted" in capsys.readouterr().out
    assert run("prune", "--run", r, "--model", tiny_hf, "--speedup", "2", "--target", "0.5", *data) == 2
    assert "both set" in capsys.readouterr().err
    assert run("prune", "--run", r, "--model", tiny_hf, "--speedup", "2", "--cost-model", tmp_path / "none.json", *data) == 2
    assert "no cost model at" in capsys.readouterr().err
