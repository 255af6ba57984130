"""save / load of prepared and converted models: JSON + safetensors, never pickle.

A converted model is stored as its torch.export graph (the JSON schema of
torch.export's serializer) plus safetensors weights, so it reloads without the
original model class. A prepared model is stored as its Hugging Face config plus
a safetensors state dict; loading rebuilds the model from `transformers` and
prepares it again with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import fx

from .core.config import PruningConfig
from .core.errors import CheckpointError
from .core.pruning_state import META_KEY, SOURCE_KEY, LinearMasks, MaskRef, PruningState, pruning_state
from .core.structures import (
    AttentionBlock,
    EncoderStructure,
    FeedForwardBlock,
    HeadTerm,
    LinearSite,
    ShapeArg,
    SkippedLinear,
)

FORMAT = "mlprune_fx.checkpoint"
FORMAT_VERSION = 1
MANIFEST = "mlprune.json"


def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"mlprune_fx": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _state_to_json(state: PruningState) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(state.config),
        "structure": dataclasses.asdict(state.structure),
        "linears": [dataclasses.asdict(lm) for lm in state.linears],
        "stage": state.stage,
        "renamed": state.renamed,
        "lowered": state.lowered,
        "quantization": state.quantization,
        "quantized": state.quantized,
        "last_penalty": state.last_penalty,
    }


def _site(d):
    return None if d is None else LinearSite(**d)


def _ref(d):
    return None if d is None else MaskRef(**d)


def _state_from_json(d: dict[str, Any], frozen: dict[str, torch.Tensor]) -> PruningState:
    cfg = d["config"]
    config = PruningConfig(**{**cfg, "granularity": tuple(cfg["granularity"]), "skip": tuple(cfg["skip"])})
    s = d["structure"]
    attention = [
        AttentionBlock(
            a["name"], *(_site(a[k]) for k in "qkvo"), a["num_heads"], a["head_dim"], a["core"],
            tuple(ShapeArg(**x) for x in a["shape_args"]), a["o_residual"],
            tuple(_site(x) for x in a.get("score_linears", ())), tuple(HeadTerm(**x) for x in a.get("head_terms", ())),
            tuple(a.get("score_terms", ())),
        )
        for a in s["attention"]
    ]
    ffn = [
        FeedForwardBlock(
            f["name"], _site(f["fc1"]), _site(f["fc2"]), f["activation"], f["fc2_residual"], _site(f.get("paired")),
            f.get("fc1_chunks", 1),
        )
        for f in s["ffn"]
    ]
    structure = EncoderStructure(attention, ffn, [SkippedLinear(**x) for x in s["skipped"]])
    linears = [
        LinearMasks(
            _site(lm["site"]), *(_ref(lm[k]) for k in ("rows", "cols", "blocks", "elements")), tuple(lm.get("uses", ()))
        )
        for lm in d["linears"]
    ]
    return PruningState(
        config, structure, linears, d["stage"], frozen, d.get("last_penalty", {}), d.get("renamed", {}),
        d.get("lowered", {}), d.get("quantization"), d.get("quantized", {}),
    )


def _input_spec(gm: fx.GraphModule) -> dict[str, dict[str, Any]]:
    from .export import input_names

    source = gm.meta.get(SOURCE_KEY, {}).get("inputs", {})
    return {name: source.get(name, {"dtype": "int64", "dim": 2}) for name in input_names(gm)}


def _dummy_inputs(spec: dict[str, dict[str, Any]], vocab: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    for name, s in spec.items():
        dtype = getattr(torch, s["dtype"])
        shape = (2, 8, 4)[: s["dim"]]
        out[name] = torch.zeros(shape, dtype=dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype) % vocab
    return out


def _export_graph(gm: fx.GraphModule, spec: dict[str, dict[str, Any]]):
    from torch._export.serde.serialize import serialize

    from .passes.capture import dynamic_shapes

    inputs = _dummy_inputs(spec)
    program = torch.export.export(gm, (), inputs, dynamic_shapes=dynamic_shapes(inputs))
    parameters = set(program.graph_signature.parameters)
    artifact = serialize(program, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
    tensors = {f"param.{k}" if k in parameters else f"state.{k}": v for k, v in program.state_dict.items()}
    tensors.update({f"const.{k}": v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
    return artifact.exported_program, tensors


def _weight_reads(gm: fx.GraphModule) -> dict[str, tuple[str, int]]:
    """Each call node that takes an attribute as its second argument (a linear's weight, a block-sparse
    matrix's values): node name -> (that attribute, which of its uses in graph order)."""
    uses: dict[str, int] = {}
    reads = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and len(node.args) > 1 and isinstance(node.args[1], fx.Node) \
                and node.args[1].op == "get_attr":
            target = node.args[1].target
            reads[node.name] = (target, uses.get(target, 0))
            uses[target] = uses.get(target, 0) + 1
    return reads


def _site_anchors(gm: fx.GraphModule, state: PruningState) -> dict[str, list]:
    """Each linear site's node by what it reads (see `_weight_reads`): torch.export renames nodes on the
    way through save and load, attributes keep their names, so load finds every site again."""
    reads = _weight_reads(gm)
    sites = [site for lm in state.linears for site in lm.nodes]
    return {site: list(reads[name]) for site in sites if (name := state.renamed.get(site, site)) in reads}


def _rename_sites(gm: fx.GraphModule, state: PruningState, anchors: dict[str, list]) -> None:
    """Point `state.renamed` at the loaded graph's nodes, so passes run after load act on the right ones."""
    by_anchor = {read: name for name, read in _weight_reads(gm).items()}
    for site, (target, use) in anchors.items():
        name = by_anchor.get((target, use))
        if name is None:
            raise CheckpointError(f"the saved graph has no node reading {target} (use {use}) for linear {site}: "
                                  "the checkpoint is inconsistent; save the model again")
        state.renamed[site] = name


def _derived_anchors(gm: fx.GraphModule, state: PruningState) -> dict[str, list]:
    """Anchors for a checkpoint saved before they were: each site's node is the use, in graph order, of an
    attribute of its weight's module (the weight, or what lowering and quantizing put beside it)."""
    reads = _weight_reads(gm)
    anchors = {}
    for lm in state.linears:
        owner = lm.site.weight.rpartition(".")[0] + "."
        found = [read for read in reads.values() if read[0].startswith(owner) and read[0].count(".") == owner.count(".")]
        for site, read in zip(lm.nodes, found):
            anchors[site] = list(read)
    return anchors


_IMPORTABLE = ("transformers.", "mlprune_fx.")


def _pytree_modules(gm: fx.GraphModule) -> list[str]:
    """Modules that define the model's input/output container types (e.g. HF's ModelOutput classes)."""
    from torch.fx.graph import _PyTreeCodeGen

    codegen = gm.graph._codegen
    if not isinstance(codegen, _PyTreeCodeGen):
        return []
    found: set[str] = set()

    def walk(spec) -> None:
        if spec is None or spec.is_leaf():
            return
        module = getattr(spec.type, "__module__", "builtins")
        if module not in ("builtins", "collections"):
            found.add(module)
        for child in spec.children():
            walk(child)

    walk(codegen.pytree_info.in_spec)
    walk(codegen.pytree_info.out_spec)
    return sorted(found)


def _import_pytree_modules(modules: list[str]) -> None:
    """Import the modules that register the output types; only from packages mlprune_fx trusts."""
    import importlib

    for module in modules:
        if not module.startswith(_IMPORTABLE):
            raise CheckpointError(
                f"the model's inputs or outputs use a type from {module!r}; import that module yourself "
                "before mlprune_fx.load (only transformers and mlprune_fx types are imported automatically)"
            )
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CheckpointError(f"the model's output type lives in {module!r}, which cannot be imported: {exc}") from exc


def _write_atomically(directory: Path, write) -> None:
    """Write into a fresh sibling folder, then swap it in: a failure leaves `directory` as it was."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tmp.chmod(0o755)
    try:
        write(tmp)
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.rmdir(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(model: fx.GraphModule, directory: str | os.PathLike) -> Path:
    """Save a prepared or converted model to `directory` (replaced whole, or not at all)."""
    state = pruning_state(model, ("prepared", "converted"))
    directory = Path(directory)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "stage": state.stage,
        "state": _state_to_json(state),
        "source": model.meta.get(SOURCE_KEY, {}),
        "inputs": _input_spec(model),
        "pytree_modules": _pytree_modules(model),
    }
    if state.stage == "converted":
        manifest["site_anchors"] = _site_anchors(model, state)
    frozen = {k: v.detach().cpu().contiguous() for k, v in state.frozen.items()}
    if state.stage == "prepared":
        source = manifest["source"]
        if not source.get("config") or source.get("model_class") in (None, "GraphModule"):
            raise CheckpointError(
                f"a prepared {source.get('model_class', 'model')} cannot be rebuilt without its code: "
                "only prepared Hugging Face models can be saved whole; save its state_dict() and call "
                "prepare again, or convert it and save the converted model"
            )
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        graph = None
    else:
        model.eval()
        graph, tensors = _export_graph(model, manifest["inputs"])
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def write(folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
        save_file(unshared(tensors), str(folder / "model.safetensors"))
        if frozen:
            save_file(frozen, str(folder / "masks.safetensors"))
        if graph is not None:
            (folder / "graph.json").write_bytes(graph)

    _write_atomically(directory, write)
    return directory


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): give each entry its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; save the model again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({exc}); save the model again") from exc


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{directory} holds no {MANIFEST}: it was not written by mlprune_fx.save")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from exc
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{directory} is not an mlprune_fx checkpoint (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} uses checkpoint format version {manifest.get('format_version')}, this mlprune_fx "
            f"reads version {FORMAT_VERSION}; load it with the version that saved it "
            f"({manifest.get('versions', {}).get('mlprune_fx', 'unknown')})"
        )
    return manifest


def load(directory: str | os.PathLike) -> fx.GraphModule:
    """Load what `save` wrote: a prepared model ready to train on, or a converted model ready to run."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder written by mlprune_fx.save")
    manifest = _read_manifest(directory)
    masks_path = directory / "masks.safetensors"
    frozen = _read_tensors(masks_path) if masks_path.exists() else {}
    state = _state_from_json(manifest["state"], frozen)
    tensors = _read_tensors(directory / "model.safetensors")
    if manifest["stage"] == "prepared":
        return _load_prepared(manifest, state, tensors)
    return _load_converted(directory, manifest, state, tensors)


def _load_prepared(manifest, state: PruningState, tensors) -> fx.GraphModule:
    import transformers

    from .prepare import prepare

    source = manifest["source"]
    config_dict = dict(source["config"])
    model_type = config_dict.get("model_type")
    try:
        config = transformers.CONFIG_MAPPING[model_type].from_dict(config_dict)
        cls = getattr(transformers, source["model_class"])
    except (KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"this transformers ({transformers.__version__}) has no {source['model_class']} / {model_type!r}; "
            f"the checkpoint was saved with {manifest['versions']}"
        ) from exc
    if source.get("attn_implementation"):
        config._attn_implementation = source["attn_implementation"]
    model = cls(config)
    vocab = getattr(config, "vocab_size", 2)
    prepared = prepare(model, state.config, _dummy_inputs(manifest["inputs"], vocab))
    missing, unexpected = _compare_keys(prepared.state_dict(), tensors)
    if missing or unexpected:
        raise CheckpointError(
            f"the checkpoint does not match the rebuilt model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in prepared.state_dict().items():
        if tuple(v.shape) != tuple(tensors[k].shape):
            raise CheckpointError(f"{k}: checkpoint shape {tuple(tensors[k].shape)} != model shape {tuple(v.shape)}")
    prepared.load_state_dict(tensors, strict=True)
    prepared.meta[META_KEY].last_penalty = state.last_penalty
    return prepared


def _compare_keys(expected: dict, found: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))


def _load_converted(directory: Path, manifest, state: PruningState, tensors) -> fx.GraphModule:
    from torch._export.serde.schema import ExportedProgram as SerializedProgram
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass

    graph_path = directory / "graph.json"
    if not graph_path.exists():
        raise CheckpointError(f"{graph_path} is missing: the checkpoint is incomplete; save the model again")
    _import_pytree_modules(manifest.get("pytree_modules", []))
    if state.quantized:
        from .runtime import int8  # noqa: F401  (defines torch.ops.mlprune.int8_linear)
    if state.lowered:
        from .runtime.ops import load_library

        load_library()
    state_dict: dict[str, torch.Tensor] = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    state_dict.update(
        {k.removeprefix("param."): torch.nn.Parameter(v, requires_grad=False) for k, v in tensors.items() if k.startswith("param.")}
    )
    constants = {k.removeprefix("const."): v for k, v in tensors.items() if k.startswith("const.")}
    try:
        serialized = _bytes_to_dataclass(SerializedProgram, graph_path.read_bytes())
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except Exception as exc:
        raise CheckpointError(
            f"could not rebuild the graph in {graph_path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            f"(saved with {manifest['versions']}, running {_versions()})"
        ) from exc
    gm = program.module()
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)
    gm.eval()
    anchors = manifest["site_anchors"] if "site_anchors" in manifest else _derived_anchors(gm, state)
    _rename_sites(gm, state, anchors)
    gm.meta[META_KEY] = state
    gm.meta[SOURCE_KEY] = manifest["source"]
    return gm
