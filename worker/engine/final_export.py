"""After training: the job's final model folders, written once by the main process.

    export_final(model, ...)  ->  merge LoRA -> spec.json -> model/ -> compression (if asked)

The trainer chooses the weights (best, else last) and evaluates the test set; this module
turns them into what the job leaves behind: ``model/`` (export.py), ``spec.json``, and when
``compression`` asks, the pruned / int8 variants with their report (compression.py), pruned
models first recovering on the training data (recovery.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from torch import nn
from torch.utils.data import DataLoader

from tunefleet.spec import compresses
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import compression, forward
from tunefleet.worker.engine.data import DataBundle
from tunefleet.worker.engine.evaluation import evaluate_module
from tunefleet.worker.engine.events import log_event, report_message_event
from tunefleet.worker.engine.export import export_model
from tunefleet.worker.engine.lora import merge_lora
from tunefleet.worker.engine.models import ModelBundle
from tunefleet.worker.engine.progress import ProgressTracker
from tunefleet.worker.engine.recovery import Recovery


def export_final(
    model: nn.Module,
    *,
    spec: spec_pb2.JobSpec,
    bundle: ModelBundle,
    data: DataBundle,
    out_dir: Path,
    emit: Any,
    device: Any,
    last_epoch: int,
    last_step: int = 0,
) -> tuple[dict[str, str], dict[str, float]]:
    """Export ``model`` (unwrapped, final weights) and compress it if the spec asks.

    Returns (artifacts, summary figures of the compression)."""
    model = model.cpu().eval()
    if bundle.lora_targets:
        # Exported models are plain: adapters folded into the weights they adapt.
        model = merge_lora(model)
        emit(log_event(f"merged LoRA into {len(bundle.lora_targets)} layers"))
    spec_dict = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    spec_path = out_dir / "spec.json"
    if not spec_path.exists():
        write_json_atomic(spec_path, spec_dict)

    def export(module: nn.Module, folder: Path) -> None:
        export_model(
            module,
            folder,
            kind=bundle.kind,
            arch=bundle.arch,
            labels=bundle.labels,
            head=bundle.head,
            task=bundle.task.as_dict(),
            spec=spec_dict,
            tokenizer=bundle.tokenizer,
            max_length=(
                bundle.task.truncation(spec.data.max_length) if bundle.task.kind == "text" else 0
            ),
        )

    export(model, out_dir / "model")
    if bundle.kind == "hf" and not isinstance(model.get_submodule(bundle.head_path), nn.Linear):
        emit(log_event(_not_a_transformers_head(bundle), "warning"))
    # Variants an earlier run left in this folder (another compression, or none asked now)
    # are of another model: compression writes this one's anew.
    for name in ("model_pruned", "model_int8"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "compression_report.json").unlink(missing_ok=True)
    artifacts = {
        "model": str(out_dir / "model"),
        "checkpoints": str(out_dir / "checkpoints"),
        "spec": str(spec_path),
    }
    summary: dict[str, float] = {}
    if compresses(spec):
        result = _compress(
            model, export, spec, bundle, data, out_dir, emit, device, last_epoch, last_step
        )
        emit(report_message_event(result.report))
        artifacts.update(result.artifacts)
        summary.update(result.summary)
    return artifacts, summary


def _not_a_transformers_head(bundle: ModelBundle) -> str:
    """Why the folder needs load_model: transformers builds its classifier as one Linear, so
    from_pretrained (and pipeline) reports this head's weights unexpected and silently draws
    a random Linear in its place, a model that predicts noise."""
    what = (
        f"a hidden layer of {bundle.head['hidden']}"
        if bundle.head.get("hidden")
        else "a Dropout of its own"
    )
    return (
        f"model/: its head ({bundle.head_path}, {what}) is not the single Linear that "
        "transformers builds: AutoModelForSequenceClassification.from_pretrained and "
        "pipeline() would put a random one in its place; load the folder with "
        "tunefleet.worker.engine.load_model"
    )


def _compress(
    model, export, spec, bundle, data, out_dir, emit, device, last_epoch, last_step
) -> compression.CompressionResult:
    dataset = data.eval if data.eval is not None else data.train
    kind = bundle.kind
    batch_size = spec.eval.batch_size or spec.train.batch_size
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=data.collate)
    emit(log_event("compressing the final model"))
    # compress() sizes it (its parts) and marks each; evaluations report within a part.
    progress = ProgressTracker(emit, "compressing", 1, epoch=float(last_epoch + 1), step=last_step)
    return compression.compress(
        model,
        spec.compression,
        kind=kind,
        evaluate=lambda module: evaluate_module(
            module, loader, kind, bundle.num_labels, progress=progress.within
        ),
        progress=progress,
        example_batch=next(iter(loader)),
        out_dir=out_dir,
        export=export,
        keep=(bundle.head_path,),
        recover=Recovery(
            spec=spec,
            train=data.train,
            collate=data.collate,
            kind=kind,
            forward=lambda module, batch: forward.logits(module, batch, kind),
            device=device,
            head_path=bundle.head_path,
            epoch=last_epoch,
        ),
    )


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)
