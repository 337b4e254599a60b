"""Fill every unset field with its default, so the engine never guesses.

Idempotent: resolving a resolved spec changes nothing, which lets the client resolve
before submitting and the coordinator resolve again without drift.
"""

from __future__ import annotations

from tunefleet.spec import choices as C
from tunefleet.v1 import spec_pb2


def _default(msg, field: str, value) -> None:
    if not msg.HasField(field):
        setattr(msg, field, value)


def _default_str(msg, field: str, value: str) -> None:
    if not getattr(msg, field):
        setattr(msg, field, value)


def default_lr(optimizer_name: str) -> float:
    return 0.01 if optimizer_name == "sgd" else 5e-5


def resolve_defaults(spec: spec_pb2.JobSpec) -> spec_pb2.JobSpec:
    s = spec_pb2.JobSpec()
    s.CopyFrom(spec)

    _default_str(s.model, "init", "pretrained")
    head = s.model.head
    _default_str(head, "init", "normal")
    _default(head, "init_std", 0.01)
    _default(head, "dropout", 0.0)
    _default(head, "hidden", 0)

    d = s.data
    _default(d, "max_length", 128)
    _default(d, "num_workers", 0)
    _default_str(d, "augment", "none")
    _default(d, "limit_train", 0)
    _default(d, "limit_eval", 0)
    if d.source in ("hf", "imagefolder"):
        _default_str(d, "train", "train")
    if d.source in ("hf", "csv", "jsonl", "parquet"):
        _default_str(d, "text_column", "text")
        _default_str(d, "label_column", "label")
        _default(d, "group_by_length", True)

    f = s.finetune
    _default_str(f, "strategy", "full")
    _default(f, "layerwise_lr_decay", 1.0)
    _default_str(f, "feature_cache", "auto")
    if f.strategy == "gradual":
        _default(f, "unfreeze_every", 1)
    if f.strategy == "lp_ft":
        _default(f, "probe_epochs", 1)
    if f.strategy == "lora":
        _default(f.lora, "r", C.LORA_R)
        _default(f.lora, "alpha", C.LORA_ALPHA)
        _default(f.lora, "dropout", C.LORA_DROPOUT)
        if not f.lora.target_modules and s.model.source == "hf":
            f.lora.target_modules.extend(C.LORA_HF_TARGETS)

    o = s.optimizer
    _default_str(o, "name", "adamw")
    _default(o, "lr", default_lr(o.name))
    _default(o, "weight_decay", 0.01 if o.name == "adamw" else 0.0)
    _default(o, "momentum", 0.9 if o.name == "sgd" else 0.0)
    if not o.betas and o.name in ("adam", "adamw"):
        o.betas.extend([0.9, 0.999])
    _default(o, "eps", 1e-8)

    sc = s.schedule
    _default_str(sc, "name", "linear")
    if not sc.HasField("warmup_ratio"):
        _default(sc, "warmup_steps", 0)
    _default(sc, "min_lr", 0.0)
    _default(sc, "step_size", 1)
    _default(sc, "gamma", 0.1)

    t = s.train
    _default(t, "epochs", 3)
    _default(t, "max_steps", 0)
    _default(t, "batch_size", 32)
    _default(t, "grad_accum_steps", 1)
    _default(t, "max_grad_norm", 1.0)
    _default_str(t, "precision", "no")
    _default(t, "seed", 0)
    _default(t, "log_every_steps", 10)
    _default(t, "checkpoint_every_steps", 0)
    _default(t, "checkpoint_every_minutes", 10.0)
    _default(t, "keep_checkpoints", 2)
    _default(t, "max_restarts", 3)

    e = s.eval
    _default(e, "every_steps", 0)
    _default_str(e, "metric", "accuracy")
    _default(e, "early_stopping_patience", 0)
    _default(e, "batch_size", 64)

    r = s.resources
    _default(r, "gpus", 0)
    _default(r, "processes", max(r.gpus, 1))
    _default(r, "nodes", 1)

    if s.HasField("compression"):
        c = s.compression
        if c.HasField("prune"):
            _default_str(c.prune, "scope", "global")
            _default_str(c.prune, "method", "unstructured")
            _default(c.prune, "recovery_steps", 0)
        if c.HasField("quantize"):
            _default_str(c.quantize, "method", "dynamic_int8")

    _default(s, "priority", 0)
    return s
