"""Tiny encoders of every supported family, and random masks to prune them with."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=FutureWarning)

from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

VOCAB = 120


def pytest_configure(config):
    """Under pytest-xdist, the cores are shared out among the workers: torch's default of one
    thread per core in every worker oversubscribes them and thrashes."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the subprocesses some tests start
        torch.set_num_threads(threads)


def tiny_model(kind: str, attn: str = "sdpa", *, hidden=64, heads=4, inter=128, layers=2, seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, attn_implementation=attn)
    if kind == "bert":
        cfg = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, num_hidden_layers=layers, **common)
        return BertForSequenceClassification(cfg)
    if kind == "bertmodel":
        cfg = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, num_hidden_layers=layers, **common)
        return BertModel(cfg)
    if kind == "roberta":
        cfg = RobertaConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, num_hidden_layers=layers, max_position_embeddings=140, **common)
        return RobertaForSequenceClassification(cfg)
    if kind == "distilbert":
        cfg = DistilBertConfig(dim=hidden, n_heads=heads, hidden_dim=inter, n_layers=layers, **common)
        return DistilBertForSequenceClassification(cfg)
    if kind == "electra":
        cfg = ElectraConfig(embedding_size=hidden // 2, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, num_hidden_layers=layers, **common)
        return ElectraForSequenceClassification(cfg)
    sizes = dict(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter, num_hidden_layers=layers, **common)
    if kind == "mpnet":  # relative-position bias shared by all layers, added to the scores
        return MPNetForSequenceClassification(MPNetConfig(**sizes))
    if kind == "deberta":  # v3-style: log buckets, Q/K projections shared with the position terms
        cfg = DebertaV2Config(**sizes, max_position_embeddings=128, relative_attention=True, position_buckets=8,
                              share_att_key=True, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm")
        return DebertaV2ForSequenceClassification(cfg)
    if kind == "deberta_v2":  # v2-style: separate position projections, no buckets
        cfg = DebertaV2Config(**sizes, max_position_embeddings=64, relative_attention=True, share_att_key=False,
                              pos_att_type=["p2c", "c2p"])
        return DebertaV2ForSequenceClassification(cfg)
    if kind == "modernbert":  # fused Wqkv, rotary embeddings, gated GELU FFN, local attention every other layer
        cfg = ModernBertConfig(**sizes, global_attn_every_n_layers=2, local_attention=8, pad_token_id=0)
        return ModernBertForSequenceClassification(cfg)
    if kind == "albert":  # one layer's weights shared by every layer
        return AlbertForSequenceClassification(AlbertConfig(**sizes, embedding_size=max(hidden // 2, 8)))
    raise ValueError(kind)


ARCHITECTURES = [
    ("bert", "sdpa"), ("bert", "eager"), ("bertmodel", "sdpa"), ("roberta", "sdpa"), ("roberta", "eager"),
    ("distilbert", "sdpa"), ("distilbert", "eager"), ("electra", "sdpa"),
    ("mpnet", "eager"), ("deberta", "eager"), ("deberta_v2", "eager"), ("modernbert", "sdpa"), ("modernbert", "eager"),
    ("albert", "sdpa"),
]
NEW_FAMILIES = ["mpnet", "deberta", "deberta_v2", "modernbert", "albert"]
EAGER_ONLY = {"mpnet", "deberta", "deberta_v2"}  # transformers has no SDPA path for them


def example_inputs(batch=3, seq=13, seed=1, pad=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad and batch > 1 and seq > 4:
        mask[0, seq - 3 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def randomize_masks(prepared, seed=0, keep=(0.2, 0.9), all_pruned=()):
    """Random scores and thresholds; masks whose key contains any of `all_pruned` keep nothing."""
    from mlprune_fx.core.pruning_state import mask_modules

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, mask in mask_modules(prepared).items():
            mask.scores.copy_(torch.randn(mask.scores.shape, generator=g))
            ratio = keep[0] + (keep[1] - keep[0]) * float(torch.rand((), generator=g))
            mask.threshold.fill_(float(torch.logit(torch.tensor(ratio))))
            if any(s in key for s in all_pruned):
                mask.threshold.fill_(-1000.0)


_CAPTURED: dict = {}


def prepare_tiny(kind="bert", attn="sdpa", config=None, inputs=None, **model_kwargs):
    """mp.prepare(tiny_model(...)): torch.export takes seconds a call, so each distinct capture runs
    once per session and every caller gets its own deep copy. The global RNG is left untouched."""
    import mlprune_fx as mp
    from mlprune_fx.passes.graph_utils import copy_graph_module

    config = mp.PruningConfig() if config is None else config
    inputs = example_inputs() if inputs is None else inputs
    key = (kind, attn, repr(config), tuple(sorted(model_kwargs.items())),
           tuple((k, tuple(v.shape), v.dtype) for k, v in inputs.items()))
    if key not in _CAPTURED:
        with torch.random.fork_rng():
            _CAPTURED[key] = mp.prepare(tiny_model(kind, attn, **model_kwargs), config, inputs)
    return copy_graph_module(_CAPTURED[key])


def logits_of(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def packed_initializers(packed) -> list:
    """values, row_ptr and col_idx of `ops.pack_blocks`' result as ONNX initializers, for hand-made graphs."""
    from onnx import TensorProto, helper

    return [
        helper.make_tensor("values", TensorProto.FLOAT, list(packed.values.shape), packed.values.flatten().tolist()),
        helper.make_tensor("row_ptr", TensorProto.INT64, [len(packed.row_ptr)], packed.row_ptr.tolist()),
        helper.make_tensor("col_idx", TensorProto.INT64, [packed.nnzb], packed.col_idx.tolist()),
    ]


@pytest.fixture(scope="session")
def minilm():
    from mlprune_fx.tools.models import load_packaged_model

    return load_packaged_model(num_labels=2)


@pytest.fixture(scope="session")
def native_library():
    """Build (if stale) and load the native kernels; a failed build fails the tests that need them."""
    from mlprune_fx.runtime import build, ops

    try:
        build.build(quiet=True)
    except build.BuildError as exc:
        pytest.fail(f"native libraries could not be built: {exc}")
    ops.load_library()


@pytest.fixture
def small_bert(monkeypatch):
    """bench_accuracy's packaged model as a 2-layer, 64-wide BERT with the packaged tokenizer: the benchmarks'
    plumbing, not MiniLM's cost."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from mlprune_fx.tools.models import packaged_model_dir

    def load(num_labels=2, attn_implementation="sdpa"):
        config = AutoConfig.from_pretrained(packaged_model_dir(), num_labels=num_labels, num_hidden_layers=2,
                                            hidden_size=64, num_attention_heads=4, intermediate_size=128)
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn_implementation)
        return model, AutoTokenizer.from_pretrained(packaged_model_dir())

    from benchmarks import bench_accuracy

    monkeypatch.setattr(bench_accuracy, "load_packaged_model", load)
