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

Pruning is in pruning.py, quantization and the int8 folder format (`model_int8/`, loaded
with `int8.load_int8`) in int8.py; this module runs the stages, measures them and reports.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunefleet.v1 import job_pb2
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.int8 import (
    int8_param_counts,
    load_int8,
    quantize_dynamic_available,
    quantize_dynamic_int8,
    quantized_linears,
    save_int8,
)
from tunefleet.worker.engine.pruning import make_permanent, prune_model

# The report tells users to load int8 folders with compression.load_int8: it stays importable here.
__all__ = ["REPORT_COLUMNS", "CompressionResult", "compress", "load_int8"]

REPORT_COLUMNS = ["model", "params", "nonzero", "size_mb", "latency_ms", "accuracy"]
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


def _prune_stage(fp32, p, keep, evaluate, export, out_dir, recover, notes, progress) -> _Stage:
    """Prune a copy of `fp32`, recover if asked, make it permanent, export and measure it.
    With recovery, `progress` is marked after the evaluation before it and after it."""
    steps = p.recovery_steps if p.HasField("recovery_steps") else 0
    if steps > 0 and recover is None:
        raise ValueError("compress: recovery_steps > 0 needs a recover(model, steps) callback")
    pruned = copy.deepcopy(fp32)
    stats = prune_model(pruned, p, keep, permanent=steps <= 0)
    extra: dict[str, float] = {"sparsity": stats.sparsity}
    label, before, trained = "pruned", {}, {}
    if steps > 0:
        before = {k: float(v) for k, v in evaluate(pruned).items()}
        progress.mark(progress.base + 1)
        trained = recover(pruned, steps) or {}
        progress.mark(progress.base + 1)
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
    progress: Any = None,
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
    `progress`: a progress.py tracker; its total becomes the number of parts (each stage's
    evaluation, recovery, the latency runs), each `mark`ed when done.
    """
    progress = progress or _NoProgress()
    progress.total = float(_parts(spec))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out_dir)
    notes: list[str] = []
    stages: list[_Stage] = []
    artifacts: dict[str, str] = {}
    fp32 = _cpu_copy(model).eval()
    skeleton = Path(tempfile.mkdtemp(prefix=".fp32-export-", dir=out_dir))
    try:
        export(fp32, skeleton / "model")
        size = _folder_bytes(skeleton / "model")
        stages.append(_measure("fp32", "fp32", fp32, evaluate, size))
        progress.mark(1)
        models = [fp32]
        source, source_folder = fp32, skeleton / "model"
        if spec.HasField("prune"):
            start = progress.base
            stage = _prune_stage(
                fp32, spec.prune, keep, evaluate, export, out_dir, recover, notes, progress
            )
            progress.mark(start + _prune_parts(spec.prune))
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
            if not quantize_dynamic_available():
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
                size, counts = _folder_bytes(dst), int8_param_counts(qmodel)
                stage = _measure("int8", label, qmodel, evaluate, size, counts)
                stage.path = str(dst)
                stages.append(stage)
                models.append(qmodel)
                progress.mark(progress.base + 1)
                n = len(quantized_linears(qmodel))
                notes.append(
                    f"int8: dynamic quantization of {n} Linear layer{'s' * (n != 1)} "
                    f"({torch.backends.quantized.engine} engine); embeddings, norms and "
                    "convs stay fp32; CPU only; load with "
                    "tunefleet.worker.engine.compression.load_int8"
                )
        for stage, ms in zip(stages, _latencies_ms(models, example_batch, kind), strict=True):
            stage.latency_ms = ms
        progress.finish()
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


def _remove_temporaries(out_dir: Path) -> None:
    """The temporary folders of a compression killed midway (a lost lease, the OOM killer):
    `.fp32-export-*` is a whole model, and its random name is never reused."""
    for pattern in (".fp32-export-*", ".model_pruned.tmp*", ".model_int8.tmp*"):
        for path in out_dir.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _prune_parts(p) -> int:
    """The pruned row's evaluation, and with recovery its evaluation before and training."""
    return 3 if p.HasField("recovery_steps") and p.recovery_steps > 0 else 1


def _parts(spec) -> int:
    """Parts of `compress` that progress counts: fp32's evaluation, the pruned stage's,
    int8's evaluation, the latency runs."""
    parts = 2 + (_prune_parts(spec.prune) if spec.HasField("prune") else 0)
    return parts + (1 if spec.HasField("quantize") else 0)


class _NoProgress:
    """Stands in for a tracker when the caller passes none."""

    total = base = 0.0

    def mark(self, units: float) -> None:
        self.base = units

    def within(self, share: float) -> None:
        pass

    def finish(self) -> None:
        pass


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
