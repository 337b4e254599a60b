"""Post-training compression: magnitude pruning, dynamic int8 quantization, and a report.

`compress(model, spec, ...)` runs the stages the `CompressionSpec` asks for, in this order:

1. fp32: the trained model as given (the reference row).
2. prune, by weight magnitude:
   - unstructured: L1, global or per layer, over the weights of Linear and Conv layers
     (embeddings, norms and biases are left alone); `model_pruned/` holds plain weights with
     zeros in them, saved dense: this alone does not shrink the files or speed up dense kernels.
   - structured, BERT-style encoders (encoder_pruning.py): the lowest-norm attention heads and
     FFN neurons of every layer are sliced out, so the model is smaller and faster; the
     removed heads are recorded in config.json (pruned_heads; load the folder with
     `tunefleet.worker.engine.load_model`, as transformers 5 no longer re-applies them).
   - structured, other models (CNNs): whole output channels / neurons with the smallest L2
     norm are zeroed per layer; same shapes, so no speed-up on dense kernels.
   With `recovery_steps`, the pruned model then trains for that many optimizer steps through
   the caller's `recover(model, steps)` (recovery.py), the unstructured / zeroing masks still
   attached as torch.nn.utils.prune hooks so that pruned weights stay zero; only then is the
   pruning made permanent (`prune.remove`).
3. quantize (`dynamic_int8`): `torch.ao.quantization.quantize_dynamic` on a CPU copy of the
   pruned model (or of the fp32 one without pruning): int8 weights for every nn.Linear,
   activations quantized on the fly. Everything else (embeddings, norms, convs) stays fp32,
   which the size column shows honestly. torch.ao.quantization is deprecated in favour of
   torchao (not a dependency) but still ships in torch 2.14; without it this stage is
   skipped with a note in the report.

Each stage is measured the same way: parameters, non-zero parameters, bytes of its saved
folder, CPU latency on `example_batch` (median of >= 7 runs after 2 warm-ups, inference mode,
the process's thread count unchanged, the stages taking turns) and `evaluate(model)`.

The int8 folder format (`model_int8/`), chosen so that loading runs no pickle:
- every file of the fp32 export except the weight files (config.json, tokenizer files,
  tunefleet_model.json, ...), so the float architecture can be rebuilt;
- `model_int8.safetensors`: for each quantized Linear `P`, `P.weight.int8` (int8 values),
  `P.weight.scale` / `P.weight.zero_point` (per-tensor scalars, or per-channel vectors) and
  `P.bias` (fp32); every other tensor of the quantized model's state dict under its own key;
- `tunefleet_int8.json`: `{"format": "tunefleet-dynamic-int8", "version": 1, "modules":
  {P: {"qscheme": ..., "axis": ...}}, ...}`.
`load_int8(folder, build_float_model)` rebuilds the float model (for Hugging Face folders it
can do so from config.json by itself), quantizes it the same way and loads the saved values.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from tunefleet.v1 import job_pb2
from tunefleet.worker.engine import encoder_pruning
from tunefleet.worker.engine.errors import InvalidJobInput

__all__ = [
    "CompressionResult",
    "PruneStats",
    "compress",
    "load_int8",
    "make_permanent",
    "prunable_weights",
    "prune_model",
    "quantize_dynamic_int8",
    "save_int8",
]

INT8_FORMAT = "tunefleet-dynamic-int8"
INT8_WEIGHTS = "model_int8.safetensors"
INT8_MANIFEST = "tunefleet_int8.json"
REPORT_COLUMNS = ["model", "params", "nonzero", "size_mb", "latency_ms", "accuracy"]
_WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth|ckpt)(\.index\.json)?$")
_WARMUPS, _MIN_TIMED_RUNS, _MAX_TIMED_RUNS, _TIMING_BUDGET_S = 2, 7, 50, 0.5


@dataclass
class CompressionResult:
    artifacts: dict[str, str]
    summary: dict[str, float]
    report: job_pb2.Report


@dataclass
class _Stage:
    key: str  # summary prefix: fp32 | pruned | int8
    label: str  # report row name
    params: int
    nonzero: int
    size_bytes: int
    latency_ms: float
    metrics: dict[str, float]
    path: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # the stage's model, in memory


# --------------------------------------------------------------------------- pruning


def prunable_weights(model: nn.Module, keep: tuple[str, ...] = ()) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every Linear / Conv layer, each parameter once.

    Embeddings and norms are skipped, and so is a Linear whose weight is tied to an
    embedding (an LM head): zeroing it would prune the embedding too. Modules under a
    path in `keep` are skipped too: the new classification head is initialised N(0, 0.01),
    so a global magnitude ranking would prune it first and flatten every logit.
    """
    conv1d = _hf_conv1d()
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) + ((conv1d,) if conv1d else ())
    embedded = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    seen: set[int] = set()
    out = []
    for path, m in model.named_modules():
        if any(path == k or path.startswith(k + ".") for k in keep):
            continue
        w = getattr(m, "weight", None)
        if isinstance(m, kinds) and isinstance(w, nn.Parameter):
            if id(w) in embedded or id(w) in seen:
                continue
            seen.add(id(w))
            out.append((m, "weight"))
    return out


def _hf_conv1d():
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:
        return None
    return Conv1D


@dataclass(frozen=True)
class PruneStats:
    sparsity: float  # share of the prunable weights zeroed or removed
    prunable: int  # prunable weights before pruning
    description: str  # what was done, for the report's notes
    removed: bool = False  # weights sliced out (structured encoder), not masked to zero


def prune_model(
    model: nn.Module, spec, keep: tuple[str, ...] = (), *, permanent: bool = True
) -> PruneStats:
    """Prune `model` in place per a PruneSpec (module doc).

    permanent=False leaves torch.nn.utils.prune's masks attached (recovery training keeps
    pruned weights at zero through them); `make_permanent` removes them afterwards.
    Structured pruning of a BERT-style encoder changes shapes and attaches nothing.
    """
    amount = float(spec.amount)
    if not 0.0 < amount < 1.0:
        raise InvalidJobInput(f"compression.prune.amount: {amount} must be in (0, 1)")
    method, scope = spec.method or "unstructured", spec.scope or "global"
    if method == "structured" and encoder_pruning.encoder_layers(model):
        try:
            done = encoder_pruning.prune_encoder(model, amount)
        except ValueError as e:
            raise InvalidJobInput(f"compression.prune: {e}") from e
        n_layers = len(encoder_pruning.encoder_layers(model))
        removed = 1.0 - done.weights_after / done.weights_before
        return PruneStats(
            removed,
            done.weights_before,
            f"structured: removed {done.heads_removed} of {done.heads} attention heads and "
            f"{done.neurons_removed:,} of {done.neurons:,} FFN neurons in each of {n_layers} "
            f"layers (smallest L2 norm per layer), {removed:.2%} of the encoder layers' "
            "Linear weights; embeddings, pooler and head kept; saved smaller "
            "(config.json pruned_heads, intermediate_size)",
            removed=True,
        )
    targets = prunable_weights(model, keep)
    if not targets:
        raise InvalidJobInput("compression.prune: the model has no Linear or Conv layer to prune")
    conv1d = _hf_conv1d()
    if method == "structured":
        # Whole output neurons / channels, ranked by L2 norm, per layer: a global ranking of
        # rows of different widths would compare unlike things.
        for m, name in targets:
            dim = 1 if conv1d and isinstance(m, conv1d) else 0  # HF Conv1D is (in, out)
            prune.ln_structured(m, name, amount=amount, n=2, dim=dim)
    elif method == "unstructured" and scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    elif method == "unstructured" and scope == "layer":
        for m, name in targets:
            prune.l1_unstructured(m, name, amount=amount)
    else:
        raise InvalidJobInput(
            f"compression.prune: unknown method/scope {method!r}/{scope!r} "
            "(method: unstructured | structured; scope: global | layer)"
        )
    if permanent:
        make_permanent(model)
    total = sum(getattr(m, n).numel() for m, n in targets)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    how = (
        "structured (whole output channels / neurons zeroed, smallest L2 norm), per layer"
        if method == "structured"
        else f"unstructured, {scope}"
    )
    return PruneStats(
        zeros / total,
        total,
        f"{amount:.0%} of Linear/Conv weights, {how}; sparsity reached {zeros / total:.2%} "
        f"of {total:,} prunable weights (embeddings, norms and biases kept"
        + (f"; {', '.join(keep)} not pruned" if keep else "")
        + "); saved dense, so no smaller or faster than fp32"
        + ("; only BERT-style encoders are made narrower" if method == "structured" else ""),
    )


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every torch.nn.utils.prune mask into its weight and drop the mask and hook."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model


# --------------------------------------------------------------------------- int8


def _quantize_dynamic():
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        return None
    return quantize_dynamic


def _ensure_quantized_engine() -> str:
    engine = torch.backends.quantized.engine
    if engine == "none":
        for candidate in ("x86", "fbgemm", "qnnpack"):
            if candidate in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = candidate
                return candidate
    return engine


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` with every nn.Linear as a dynamically quantized int8 Linear."""
    quantize_dynamic = _quantize_dynamic()
    if quantize_dynamic is None:
        raise RuntimeError("torch.ao.quantization.quantize_dynamic is not available")
    _ensure_quantized_engine()
    m = _cpu_copy(model).eval()
    with warnings.catch_warnings():
        # torch 2.10+ deprecates torch.ao.quantization in favour of torchao (not installed).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)


def _quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized import dynamic as nnqd

    return {n: m for n, m in model.named_modules() if isinstance(m, nnqd.Linear)}


def save_int8(qmodel: nn.Module, folder: Path, *, skeleton: Path | None = None) -> None:
    """Write `qmodel` (from quantize_dynamic_int8) in the int8 folder format (module doc)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if skeleton is not None:
        for f in Path(skeleton).iterdir():
            if f.is_file() and not _WEIGHT_FILE.search(f.name):
                shutil.copy2(f, folder / f.name)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, dict] = {}
    qlinears = _quantized_linears(qmodel)
    for name, m in qlinears.items():
        w, b = m._weight_bias()
        info = {"qscheme": str(w.qscheme()).removeprefix("torch.")}
        tensors[f"{name}.weight.int8"] = w.int_repr()
        if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            tensors[f"{name}.weight.scale"] = torch.tensor(w.q_scale(), dtype=torch.float64)
            tensors[f"{name}.weight.zero_point"] = torch.tensor(w.q_zero_point())
        else:
            tensors[f"{name}.weight.scale"] = w.q_per_channel_scales().to(torch.float64)
            tensors[f"{name}.weight.zero_point"] = w.q_per_channel_zero_points()
            info["axis"] = int(w.q_per_channel_axis())
        if b is not None:
            tensors[f"{name}.bias"] = b.detach()
        modules[name] = info
    prefixes = tuple(f"{n}." for n in qlinears)
    for k, v in qmodel.state_dict().items():
        if isinstance(v, torch.Tensor) and not v.is_quantized and not k.startswith(prefixes):
            tensors[k] = v.detach()
    seen: set[int] = set()
    for k, v in tensors.items():  # safetensors refuses shared storage (tied weights)
        v = v.cpu().contiguous()
        if v.data_ptr() in seen and v.numel():
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    save_file(tensors, str(folder / INT8_WEIGHTS), metadata={"format": INT8_FORMAT})
    manifest = {
        "format": INT8_FORMAT,
        "version": 1,
        "dtype": "qint8",
        "modules": modules,
        "torch": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
    }
    _write_json(folder / INT8_MANIFEST, manifest)


def load_int8(
    folder: str | Path, build_float_model: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """Load a `model_int8/` folder onto the CPU.

    `build_float_model` returns the float architecture (weights don't matter; they are
    replaced). Leave it out for folders the engine exported: the architecture is rebuilt
    from tunefleet_model.json (and config.json for Hugging Face models).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = json.loads((folder / INT8_MANIFEST).read_text())
    if manifest.get("format") != INT8_FORMAT:
        raise ValueError(f"{folder}: not a {INT8_FORMAT} folder")
    float_model = build_float_model() if build_float_model else _float_architecture(folder)
    tensors = load_file(str(folder / INT8_WEIGHTS))
    quantized = manifest["modules"]
    own = {k: v for k, v in tensors.items() if not k.startswith(tuple(f"{n}." for n in quantized))}
    # Float tensors go in before quantizing: quantized Linears only load their own format.
    missing, unexpected = float_model.load_state_dict(own, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in quantized]
    if missing or unexpected:
        raise ValueError(f"{folder}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    qmodel = quantize_dynamic_int8(float_model)
    qlinears = _quantized_linears(qmodel)
    if set(qlinears) != set(quantized):
        raise ValueError(
            f"{folder}: the rebuilt model's Linear layers do not match the saved ones "
            f"({sorted(set(qlinears) ^ set(quantized))[:5]})"
        )
    for name, info in quantized.items():
        ints = tensors[f"{name}.weight.int8"]
        scale = tensors[f"{name}.weight.scale"]
        zero = tensors[f"{name}.weight.zero_point"]
        bias = tensors.get(f"{name}.bias")
        if "axis" in info:
            w = torch._make_per_channel_quantized_tensor(ints, scale, zero, info["axis"])
        else:
            w = torch._make_per_tensor_quantized_tensor(ints, float(scale), int(zero))
        qlinears[name].set_weight_bias(w, bias)
    return qmodel.eval()


def _float_architecture(folder: Path) -> nn.Module:
    """The exported model's float architecture with throwaway weights, like export.load_model."""
    meta_path = folder / "tunefleet_model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"kind": "hf", "head": {}}
    head = meta.get("head") or {}
    if meta["kind"] == "hf":
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder}: no config.json; pass build_float_model")
        from transformers import AutoConfig, AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
        encoder_pruning.restore_pruned_heads(model)  # structured pruning: narrower attention
        if head.get("hidden"):  # not a stock HF head: rebuild it as the trainer did
            from tunefleet.worker.engine.heads import replace_hf_head

            model, _ = replace_hf_head(model, meta["num_labels"], meta["labels"], head)
        return model
    from tunefleet.worker.engine.heads import replace_torchvision_head
    from tunefleet.worker.engine.models import build_torchvision_arch

    in_channels = (meta.get("task") or {}).get("in_channels") or 3
    model = build_torchvision_arch(meta["arch"], in_channels=in_channels)
    model, _ = replace_torchvision_head(model, meta["num_labels"], head)
    return model


# --------------------------------------------------------------------------- measuring


def _cpu_copy(model: nn.Module) -> nn.Module:
    # Copy first, then move: the caller's model (and its optimizer) keep their device.
    return copy.deepcopy(model).to("cpu")


def _forward(model: nn.Module, batch: dict, kind: str):
    if kind in ("image", "torchvision"):
        out = model(batch["pixel_values"])
    else:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
    return out.logits if hasattr(out, "logits") else out


def _latencies_ms(models: list[nn.Module], batch: dict, kind: str) -> list[float]:
    """Median wall time of one forward pass on the CPU, for each model.

    The models take turns, run by run, so a burst of load from elsewhere on the machine
    slows all of them alike instead of skewing one row. 2 warm-ups each, then at least 7
    timed runs each; small models get more (up to 50, about half a second per model).
    """
    batch = {k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for _ in range(_WARMUPS):
            for m in models:
                _forward(m, batch, kind)
        while len(times[0]) < _MIN_TIMED_RUNS or (
            sum(map(sum, times)) < _TIMING_BUDGET_S * len(models)
            and len(times[0]) < _MAX_TIMED_RUNS
        ):
            for m, ts in zip(models, times, strict=True):
                t0 = time.perf_counter()
                _forward(m, batch, kind)
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1000.0 for ts in times]


def _param_counts(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


def _int8_param_counts(qmodel: nn.Module) -> tuple[int, int]:
    """Counts the packed int8 weights too (they are not nn.Parameters)."""
    total, nonzero = _param_counts(qmodel)
    for m in _quantized_linears(qmodel).values():
        w, b = m._weight_bias()
        ints = w.int_repr()
        zero = (
            w.q_zero_point()
            if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
            else w.q_per_channel_zero_points().view(-1, *([1] * (ints.ndim - 1)))
        )
        total += ints.numel()
        nonzero += int((ints.to(torch.int64) != zero).sum())
        if b is not None:
            total += b.numel()
            nonzero += int(torch.count_nonzero(b))
    return total, nonzero


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    os.replace(tmp, path)


def _export_to(export: Callable[[nn.Module, Path], None], model: nn.Module, dst: Path) -> None:
    """Export into a fresh temp folder, then swap it in: no half-written model folder stays."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export(model, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _measure(key, label, model, evaluate, size_bytes, counts=None) -> _Stage:
    """Everything but latency, which `compress` measures for all stages together."""
    params, nonzero = counts or _param_counts(model)
    metrics = {k: float(v) for k, v in evaluate(model).items()}
    return _Stage(key, label, params, nonzero, size_bytes, 0.0, metrics)


# --------------------------------------------------------------------------- compress


def _prune_stage(fp32, p, keep, evaluate, export, out_dir, recover, notes) -> _Stage:
    """Prune a copy of `fp32`, recover if asked, make it permanent, export and measure it."""
    steps = p.recovery_steps if p.HasField("recovery_steps") else 0
    if steps > 0 and recover is None:
        raise ValueError("compress: recovery_steps > 0 needs a recover(model, steps) callback")
    pruned = copy.deepcopy(fp32)
    stats = prune_model(pruned, p, keep, permanent=steps <= 0)
    extra: dict[str, float] = {"sparsity": stats.sparsity}
    label, before, trained = "pruned", {}, {}
    if steps > 0:
        before = {k: float(v) for k, v in evaluate(pruned).items()}
        trained = recover(pruned, steps) or {}
        make_permanent(pruned).cpu().eval()
        label = f"pruned+{steps} recovery step{'s' * (steps != 1)}"
        extra["recovery_steps"] = float(steps)
        extra.update({f"{k}_before_recovery": v for k, v in before.items()})
    dst = out_dir / "model_pruned"
    _export_to(export, pruned, dst)
    stage = _measure("pruned", label, pruned, evaluate, _folder_bytes(dst))
    stage.path, stage.extra, stage.model = str(dst), extra, pruned
    notes.append(f"pruned: {stats.description}")
    if steps > 0:
        loss = (
            f"train loss {trained['loss_first']:.4f} -> {trained['loss_last']:.4f}; "
            if {"loss_first", "loss_last"} <= trained.keys()
            else ""
        )
        metric = "accuracy" if "accuracy" in before else next(iter(before), "")
        change = (
            f"eval {metric} {before[metric]:.4f} before, {stage.metrics[metric]:.4f} after"
            if metric in stage.metrics
            else "no eval metric"
        )
        lr = f" at lr {trained['lr']:g}" if "lr" in trained else ""
        how = (
            "on the smaller model"
            if stats.removed
            else "with the pruned weights held at zero, then made permanent"
        )
        notes.append(
            f"pruned: {steps} recovery fine-tuning step{'s' * (steps != 1)}{lr} {how}; "
            f"{loss}{change}"
        )
    return stage


def compress(
    model: nn.Module,
    spec,
    *,
    kind: str,
    evaluate: Callable[[nn.Module], dict[str, float]],
    example_batch: dict,
    out_dir: Path,
    export: Callable[[nn.Module, Path], None],
    keep: tuple[str, ...] = (),
    recover: Callable[[nn.Module, int], dict[str, float]] | None = None,
) -> CompressionResult:
    """Run the stages of `spec` (a CompressionSpec) on CPU copies of `model` (left as is).

    kind: "hf"/"text" (the model takes the batch's tensors as keywords and returns `.logits`)
    or "torchvision"/"image" (the model takes `pixel_values`). `evaluate` gets each stage's
    model on the CPU (int8 kernels only run there, and one device keeps the rows comparable).
    `export(model, folder)` writes a float model folder the way the trainer does.
    `keep`: module paths never pruned (the trainer passes the classification head).
    `recover(model, steps)`: trains the pruned model in place for `steps` optimizer steps and
    leaves it on the CPU in eval mode (the trainer passes recovery.py's loop over the job's
    data); it may return {"loss_first", "loss_last"}. Needed when recovery_steps > 0.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    stages: list[_Stage] = []
    artifacts: dict[str, str] = {}
    fp32 = _cpu_copy(model).eval()
    skeleton = Path(tempfile.mkdtemp(prefix=".fp32-export-", dir=out_dir))
    try:
        export(fp32, skeleton / "model")
        size = _folder_bytes(skeleton / "model")
        stages.append(_measure("fp32", "fp32", fp32, evaluate, size))
        models = [fp32]
        source, source_folder = fp32, skeleton / "model"
        if spec.HasField("prune"):
            stage = _prune_stage(fp32, spec.prune, keep, evaluate, export, out_dir, recover, notes)
            artifacts["model_pruned"] = stage.path
            stages.append(stage)
            source, source_folder = stage.model, Path(stage.path)
            models.append(source)
        if spec.HasField("quantize"):
            method = spec.quantize.method or "dynamic_int8"
            if method != "dynamic_int8":
                raise InvalidJobInput(
                    f"compression.quantize.method: {method!r} is not supported (dynamic_int8)"
                )
            if _quantize_dynamic() is None:
                notes.append("int8: skipped, torch.ao.quantization.quantize_dynamic is missing")
            else:
                qmodel = quantize_dynamic_int8(source)
                dst = out_dir / "model_int8"
                tmp = dst.with_name(".model_int8.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                # config.json of the quantized model: a structurally pruned one is narrower.
                save_int8(qmodel, tmp, skeleton=source_folder)
                shutil.rmtree(dst, ignore_errors=True)
                os.replace(tmp, dst)
                artifacts["model_int8"] = str(dst)
                label = "pruned+int8" if source is not fp32 else "int8"
                size, counts = _folder_bytes(dst), _int8_param_counts(qmodel)
                stage = _measure("int8", label, qmodel, evaluate, size, counts)
                stage.path = str(dst)
                stages.append(stage)
                models.append(qmodel)
                n = len(_quantized_linears(qmodel))
                notes.append(
                    f"int8: dynamic quantization of {n} Linear layer{'s' * (n != 1)} "
                    f"({torch.backends.quantized.engine} engine); embeddings, norms and "
                    "convs stay fp32; CPU only; load with "
                    "tunefleet.worker.engine.compression.load_int8"
                )
        for stage, ms in zip(stages, _latencies_ms(models, example_batch, kind), strict=True):
            stage.latency_ms = ms
        notes.append(
            f"latency: CPU, one batch of {_batch_size(example_batch)}, "
            f"{torch.get_num_threads()} threads, median of interleaved runs"
        )
    finally:
        shutil.rmtree(skeleton, ignore_errors=True)

    summary = _summary(stages)
    report = _report(stages, notes)
    report_path = out_dir / "compression_report.json"
    _write_json(
        report_path,
        {
            "columns": REPORT_COLUMNS,
            "stages": [
                {
                    "model": s.label,
                    "params": s.params,
                    "nonzero": s.nonzero,
                    "size_bytes": s.size_bytes,
                    "latency_ms": s.latency_ms,
                    "metrics": s.metrics,
                    "path": s.path,
                    **s.extra,
                }
                for s in stages
            ],
            "batch_size": _batch_size(example_batch),
            "torch_threads": torch.get_num_threads(),
            "summary": summary,
            "notes": notes,
        },
    )
    artifacts["compression_report"] = str(report_path)
    return CompressionResult(artifacts=artifacts, summary=summary, report=report)


def _batch_size(batch: dict) -> int:
    for v in batch.values():
        if torch.is_tensor(v) and v.ndim:
            return int(v.shape[0])
    return 0


def _summary(stages: list[_Stage]) -> dict[str, float]:
    out: dict[str, float] = {}
    by_key = {s.key: s for s in stages}
    for s in stages:
        for k, v in s.metrics.items():
            out[f"{s.key}_{k}"] = v
        out[f"{s.key}_latency_ms"] = s.latency_ms
        out[f"{s.key}_size_mb"] = s.size_bytes / 1e6
        out[f"{s.key}_nonzero_params"] = float(s.nonzero)
    base = by_key["fp32"]
    if "pruned" in by_key:  # pruned_sparsity, pruned_recovery_steps, ..._before_recovery
        out.update({f"pruned_{k}": v for k, v in by_key["pruned"].extra.items()})
    for key in ("pruned", "int8"):
        if key in by_key and by_key[key].latency_ms > 0:
            out[f"{key}_speedup"] = base.latency_ms / by_key[key].latency_ms
            out[f"{key}_size_ratio"] = by_key[key].size_bytes / max(base.size_bytes, 1)
    return out


def _report(stages: list[_Stage], notes: list[str]) -> job_pb2.Report:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = [
        [
            s.label,
            f"{s.params:,}",
            f"{s.nonzero:,}",
            f"{s.size_bytes / 1e6:.2f}",
            f"{s.latency_ms:.2f}",
            f"{s.metrics['accuracy']:.4f}" if "accuracy" in s.metrics else "-",
        ]
        for s in stages
    ]
    table = Table(title="compression", box=box.SIMPLE_HEAD)
    for i, c in enumerate(REPORT_COLUMNS):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console = Console(file=io.StringIO(), width=100, color_system=None, force_terminal=False)
    console.print(table)
    text = console.file.getvalue().rstrip() + "\n" + "".join(f"  {n}\n" for n in notes)
    return job_pb2.Report(
        name="compression",
        columns=REPORT_COLUMNS,
        rows=[job_pb2.ReportRow(cells=r) for r in rows],
        text=text,
    )
