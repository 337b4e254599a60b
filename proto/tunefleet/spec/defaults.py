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


def default_lr(optimizer_name: str, strategy: str = "") -> float:
    """5e-5 (adam/adamw) or 0.01 (sgd) where pretrained layers train; a linear probe (only
    the new layer trains) takes the usual lr of a freshly drawn layer, 10x that and more:
    1e-3 for adam/adamw (at 5e-5 a 26-class probe on MiniLM reaches 0.08 in 3 epochs, at
    5e-4 0.44; bench/quality_vs_trainer.py), 0.1 for sgd."""
    if strategy == "head_only":
        return 0.1 if optimizer_name == "sgd" else 1e-3
    return 0.01 if optimizer_name == "sgd" else 5e-5


def default_head_lr_scale(strategy: str) -> float:
    """1: the new layer trains at the job's lr. Measured, not assumed: Caffe's 10x for a new
    layer cost a full MiniLM fine-tune 1.6 points (0.611 -> 0.595, 26 Debian sections)."""
    return 1.0


def default_group_by_length(strategy: str) -> bool:
    """Off: a plain shuffle, as HF Trainer. Length-grouped steps save the padding of random
    batches, but each step then holds examples of nearly one length, and length can follow
    the class (Debian sections: "... - development files", "... - documentation"); the
    gradient of such a step is biased toward a few classes. Measured on 26 Debian sections
    (MiniLM, batch 8, seed 0, accuracy after epochs 1/2/3): grouped 0.620 / 0.667 / 0.688,
    shuffled 0.636 / 0.686 / 0.695; at batch 32 over 6 seeds grouped trailed Trainer's
    shuffle by 0.9 points. A linear probe learned the length outright (topics: 0.795 vs
    0.9375). So grouping is a speed lever to opt into (1.15-1.8x on CPU), not a default."""
    return False


_IMAGE_SOURCES = ("torchvision", "imagefolder")


def default_batch_size(model_source: str, data_source: str = "") -> int:
    """8 for Hugging Face models, as TrainingArguments: on a few thousand examples a
    fine-tune needs the steps (26 Debian sections, 4,000 examples, 3 epochs: batch 32 0.64,
    batch 8 0.695, Trainer's defaults 0.704). 32 for torchvision and the other vision
    models, whose BatchNorm layers need more than 8 examples a step for their statistics.
    A model from an earlier job (source: job) is not known here: its data says which
    (text: an HF model; images: a vision one)."""
    if model_source == "job":
        return 32 if data_source in _IMAGE_SOURCES else 8
    return 8 if model_source == "hf" else 32


def default_validation_fraction(data: spec_pb2.DataSpec) -> float:
    """torchvision datasets have only train and test: without data.eval, 10 % of train
    becomes the validation set (6,000 of CIFAR-10's or Fashion-MNIST's training images, as
    many as their test splits hold: enough that picking a checkpoint is not picking noise),
    so the test split never picks the model. Elsewhere nothing is carved unless asked."""
    return 0.1 if data.source == "torchvision" and not data.eval else 0.0


def default_test(data: spec_pb2.DataSpec) -> str:
    """torchvision: its test split, unless data.eval already names it (old YAMLs that chose
    the model on it: the same figures are not reported twice as if independent)."""
    if data.source != "torchvision":
        return ""
    return "none" if data.eval == "test" else "test"


def resolve_defaults(spec: spec_pb2.JobSpec) -> spec_pb2.JobSpec:
    s = spec_pb2.JobSpec()
    s.CopyFrom(spec)

    _default_str(s.model, "init", "pretrained")
    head = s.model.head
    # An explicit init_std asks for a normal init; otherwise the model's own recipe. Dropout
    # stays unset ("the model's own"): a default of 0 would silently remove BERT's.
    _default_str(head, "init", "normal" if head.HasField("init_std") else "auto")
    if head.init == "normal":
        _default(head, "init_std", C.HEAD_INIT_STD)
    _default_str(head, "bias_init", "auto")
    if head.bias_init == "normal":
        _default(head, "bias_std", head.init_std if head.HasField("init_std") else C.HEAD_INIT_STD)
    _default(head, "hidden", 0)

    d = s.data
    # 0: the model's own limit (tokenizer and positions, at most 512), as a Trainer script's
    # truncation=True: a fixed 128 cut long texts a Trainer user keeps whole.
    _default(d, "max_length", 0)
    _default(d, "num_workers", 0)
    _default_str(d, "augment", "none")
    _default(d, "limit_train", 0)
    _default(d, "limit_eval", 0)
    _default(d, "limit_test", 0)
    _default(d, "validation_fraction", default_validation_fraction(d))
    _default(d, "validation_seed", 0)
    _default_str(d, "test", default_test(d))
    if d.source in ("hf", "imagefolder"):
        _default_str(d, "train", "train")
    if d.source in ("hf", "csv", "jsonl", "parquet"):
        _default_str(d, "text_column", "text")
        _default_str(d, "label_column", "label")
        _default(d, "group_by_length", default_group_by_length(s.finetune.strategy))

    f = s.finetune
    _default_str(f, "strategy", "full")
    _default(f, "layerwise_lr_decay", 1.0)
    _default_str(f, "feature_cache", "auto")
    _default(f, "head_lr_scale", default_head_lr_scale(f.strategy))
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
    _default(o, "lr", default_lr(o.name, f.strategy))
    # 0 for every optimizer, as TrainingArguments: AdamW's 0.01 changed nothing measurable on
    # a 3-epoch MiniLM fine-tune (0.586 both), and one default fewer differs from Trainer's.
    _default(o, "weight_decay", 0.0)
    _default(o, "momentum", 0.9 if o.name == "sgd" else 0.0)
    if not o.betas and o.name in ("adam", "adamw"):
        o.betas.extend([0.9, 0.999])
    _default(o, "eps", 1e-8)
    if f.strategy == "lp_ft":
        # The probe trains a freshly drawn layer alone: a linear probe's lr, not the
        # fine-tune's (MiniLM, 4 topics, one probe epoch: 0.205 at 5e-5, chance 0.25).
        _default(f, "probe_lr", default_lr(o.name, "head_only"))

    sc = s.schedule
    _default_str(sc, "name", "linear")
    if not sc.HasField("warmup_ratio"):
        _default(sc, "warmup_steps", 0)
    _default(sc, "min_lr", 0.0)
    # step_size stays unset: a third of the run after warmup (the engine knows its length),
    # so `step` alone drops the lr by gamma twice, as the classic 30/60/90-epoch recipe.
    _default(sc, "gamma", 0.1)

    t = s.train
    _default(t, "epochs", 3)
    _default(t, "max_steps", 0)
    _default(t, "batch_size", default_batch_size(s.model.source, s.data.source))
    _default(t, "grad_accum_steps", 1)
    _default(t, "max_grad_norm", 1.0)
    _default_str(t, "precision", "auto")
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
