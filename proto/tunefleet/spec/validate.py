"""The one validator: used by `ftctl validate`, the SDK before submitting, and the
coordinator on SubmitJob, so all three report exactly the same problems."""

from __future__ import annotations

import math
import os
import re

from google.protobuf.descriptor import FieldDescriptor

from tunefleet import limits
from tunefleet.spec import choices as C
from tunefleet.spec.defaults import default_lr, default_validation_fraction
from tunefleet.spec.environment import check_environment
from tunefleet.spec.errors import FieldError
from tunefleet.spec.model_blocks import body_block_count
from tunefleet.spec.paths import looks_local
from tunefleet.spec.sweep import check as check_sweep
from tunefleet.spec.urls import is_url, url_problem
from tunefleet.v1 import spec_pb2


class _Check:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def choice(self, path: str, value: str, allowed: tuple[str, ...], *, required=True) -> bool:
        if not value:
            if required:
                self.fail(path, f"required; {C.one_of(allowed)}")
            return False
        if value not in allowed:
            self.fail(path, f"{limits.quote(value)} is not allowed; {C.one_of(allowed)}")
            return False
        return True

    def at_least(self, msg, field: str, path: str, low, *, strict=False) -> None:
        if not msg.HasField(field):
            return
        v = getattr(msg, field)
        if v < low or (strict and v == low):
            self.fail(path, f"must be {'>' if strict else '>='} {low:g}, got {v:g}")

    def at_most(self, msg, field: str, path: str, high, why: str) -> None:
        if msg.HasField(field) and getattr(msg, field) > high:
            self.fail(path, f"must be <= {high:g} ({why}), got {getattr(msg, field):g}")

    def within(
        self, msg, field: str, path: str, low, high, *, high_open=False, low_open=False, note=""
    ) -> None:
        if not msg.HasField(field):
            return
        v = getattr(msg, field)
        bad = v < low or v > high or (low_open and v == low) or (high_open and v == high)
        if bad:
            lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
            self.fail(path, f"must be in {lo}{low:g}, {high:g}{hi}{note}, got {v:g}")

    def regex(self, path: str, pattern: str) -> None:
        try:
            re.compile(pattern)
        except re.error as e:
            self.fail(path, f"not a valid regular expression: {e}")

    def file(self, path: str, value: str) -> None:
        """The schema's part of a path field: a URL of a supported scheme, or an absolute
        path. Whether the file exists is the environment check's (spec/environment.py)."""
        if not value:
            return
        if is_url(value):
            problem = url_problem(value)
            if problem:
                self.fail(path, f"{limits.quote(value)}: {problem}")
        elif not os.path.isabs(value):  # as Path.is_absolute, without building a Path
            self.fail(
                path,
                f"relative path {limits.quote(value)}: give an absolute path (ftctl and the "
                "SDK resolve paths against the YAML file's folder) or a URL",
            )

    def finite(self, msg, prefix: str = "") -> None:
        """NaN and infinity pass every range check (`nan < 0` is False): refuse them in every
        float field, as the YAML parser does (a JobSpec object can hold them)."""
        for field, value in msg.ListFields():
            path = f"{prefix}{field.name}"
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.message_type.GetOptions().map_entry:
                    value_field = field.message_type.fields_by_name["value"]
                    if value_field.type in _FLOATS:
                        for k, v in value.items():
                            self._finite_value(f"{path}.{k}", v)
                    continue
                children = value if _repeated(field) else [value]
                for i, child in enumerate(children):
                    index = f"[{i}]" if _repeated(field) else ""
                    self.finite(child, f"{path}{index}.")
            elif field.type in _FLOATS:
                for i, v in enumerate(value if _repeated(field) else [value]):
                    self._finite_value(f"{path}[{i}]" if _repeated(field) else path, v)

    def _finite_value(self, path: str, v: float) -> None:
        if not math.isfinite(v):
            self.fail(path, f"expected a finite number, got {v}")


_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def _repeated(field) -> bool:
    rep = getattr(field, "is_repeated", None)
    if rep is not None:
        return rep() if callable(rep) else bool(rep)
    return field.label == FieldDescriptor.LABEL_REPEATED


def validate(spec: spec_pb2.JobSpec, *, check_paths: bool = True) -> list[FieldError]:
    """Every problem in `spec`, each with its field path; an empty list means valid.

    With `check_paths` False this is the pure schema check: it reads nothing but the spec,
    so its answer is the same on every machine (the coordinator runs only this). With it,
    the environment check (spec/environment.py) also asks this machine's disk."""
    errors = check_schema(spec, check_paths=check_paths)
    if check_paths and not spec.HasField("sweep"):
        for problem in check_environment(spec, model_fit=True):
            # In the spec's section order, as one validator would list them.
            at = _section(problem.path)
            i = next((i for i, e in enumerate(errors) if _section(e.path) > at), len(errors))
            errors.insert(i, problem)
    return errors


_SECTIONS = [f.name for f in spec_pb2.JobSpec.DESCRIPTOR.fields]


def _section(path: str) -> int:
    top = path.split(".", 1)[0].split("[", 1)[0]
    return _SECTIONS.index(top) if top in _SECTIONS else len(_SECTIONS)


def check_schema(spec: spec_pb2.JobSpec, *, check_paths: bool = False) -> list[FieldError]:
    """The schema's problems (see validate); `check_paths` only reaches a sweep's trials."""
    c = _Check()
    size = spec.ByteSize()
    if size > limits.MAX_SPEC_BYTES:
        # Nothing else is checked: a spec this big is refused whatever it holds.
        c.fail(
            "<spec>",
            f"{size:,} bytes; a job spec may be at most {limits.MAX_SPEC_BYTES:,} bytes "
            "(1 MiB). Keep large data (labels, lists) in files the job reads",
        )
        return c.errors
    if spec.HasField("sweep"):  # every job the sweep can create (tunefleet.spec.sweep)
        return check_sweep(spec, lambda job: validate(job, check_paths=check_paths))
    if not spec.name:
        c.fail("name", "required: a short name for the job")
    elif len(spec.name) > limits.MAX_NAME_CHARS:
        c.fail("name", f"at most {limits.MAX_NAME_CHARS} characters")
    elif not limits.is_safe_name(spec.name):
        c.fail("name", f"{limits.quote(spec.name)}: use only {limits.NAME_RULE}")
    c.finite(spec)
    _model(c, spec)
    _data(c, spec)
    _finetune(c, spec)
    _optimizer(c, spec.optimizer)
    _schedule(c, spec)
    _train(c, spec)
    _eval(c, spec)
    _resources(c, spec.resources)
    _compression(c, spec)
    if is_url(spec.output.dir):
        c.fail(
            "output.dir",
            "a folder on the worker, not a URL; workers upload succeeded jobs' artifacts "
            "to their --artifacts-uri",
        )
    return c.errors


def _model(c: _Check, spec) -> None:
    m = spec.model
    if not spec.HasField("model"):
        c.fail("model", "required: e.g. {source: hf, name: sentence-transformers/all-MiniLM-L6-v2}")
        return
    if not c.choice("model.source", m.source, C.MODEL_SOURCES):
        return
    if m.source == "job":
        if not m.job:
            c.fail("model.job", "required with source: job (the id of a finished job)")
    elif not m.name:
        what = "a hub id or a local folder" if m.source == "hf" else C.one_of(C.TORCHVISION_ARCHS)
        c.fail("model.name", f"required: {what}")
    elif m.source == "torchvision":
        c.choice("model.name", m.name, C.TORCHVISION_ARCHS)
    elif m.source == "hf" and (looks_local(m.name) or is_url(m.name)):
        c.file("model.name", m.name)
    if m.job and m.source != "job":
        c.fail("model.job", "only applies to source: job")
    if m.weights and m.source != "torchvision":
        c.fail("model.weights", "only applies to source: torchvision (hf models load their own)")
    if m.weights and m.checkpoint:
        c.fail("model.checkpoint", "give either weights (download) or checkpoint (local), not both")
    if m.checkpoint:
        if m.source != "torchvision":
            c.fail("model.checkpoint", "only applies to source: torchvision")
        c.file("model.checkpoint", m.checkpoint)
    c.at_least(m, "num_labels", "model.num_labels", 2)
    if m.labels:
        if len(set(m.labels)) != len(m.labels):
            c.fail("model.labels", "label names must be unique")
        if m.HasField("num_labels") and m.num_labels != len(m.labels):
            c.fail(
                "model.num_labels", f"is {m.num_labels} but model.labels has {len(m.labels)} names"
            )
    if c.choice("model.init", m.init, C.MODEL_INITS, required=False) and m.init == "random":
        for field in ("weights", "checkpoint"):
            if getattr(m, field):
                c.fail(
                    f"model.{field}",
                    "model.init random starts from random weights; drop one of the two",
                )
    h = m.head
    c.choice("model.head.init", h.init, C.HEAD_INIT, required=False)
    c.at_least(h, "init_std", "model.head.init_std", 0.0, strict=True)
    c.choice("model.head.bias_init", h.bias_init, C.HEAD_BIAS_INIT, required=False)
    c.at_least(h, "bias_std", "model.head.bias_std", 0.0, strict=True)
    if h.HasField("init_std") and h.init in ("auto", "method", "model", "default"):
        c.fail("model.head.init_std", f"applies to init normal only, not init {h.init}")
    if h.HasField("bias_std") and h.bias_init in ("", "auto", "zeros"):
        c.fail(
            "model.head.bias_std",
            f"applies to bias_init normal only, not {h.bias_init or 'auto'}",
        )
    c.within(h, "dropout", "model.head.dropout", 0.0, 1.0, high_open=True)
    c.at_least(h, "hidden", "model.head.hidden", 0)


def _data(c: _Check, spec) -> None:
    d = spec.data
    if not spec.HasField("data"):
        c.fail("data", "required: e.g. {source: csv, train: train.csv, eval: test.csv}")
        return
    if not c.choice("data.source", d.source, C.DATA_SOURCES):
        return
    if d.source in C.FILE_DATA_SOURCES:
        if not d.train:
            c.fail("data.train", f"required: the path of the training {d.source} file")
        c.file("data.train", d.train)
        c.file("data.eval", d.eval)
        c.file("data.test", d.test)
    if d.source == "hf" and not d.name:
        c.fail("data.name", "required with source: hf (a dataset id such as glue)")
    if d.source == "torchvision":
        c.choice("data.name", d.name, C.TORCHVISION_DATASETS)
    if d.source in C.IMAGE_DATA_SOURCES:
        if not d.root:
            c.fail("data.root", f"required with source: {d.source} (a folder or its URL)")
        elif not d.download:
            c.file("data.root", d.root)
    if d.download and d.source != "torchvision":
        c.fail("data.download", "only applies to source: torchvision")
    image = d.source in C.IMAGE_DATA_SOURCES
    if image:
        for field in ("text_column", "text_pair_column"):
            if getattr(d, field):
                c.fail(f"data.{field}", f"does not apply to image data (source: {d.source})")
        if d.HasField("group_by_length") and d.group_by_length:
            c.fail(
                "data.group_by_length", "applies to text data only (images are resized to one size)"
            )
    elif d.augment and d.augment != "none":
        c.fail("data.augment", "augmentation presets apply to image data only")
    c.choice("data.augment", d.augment, C.AUGMENT, required=False)
    c.within(d, "max_length", "data.max_length", 0, 8192, note=" (0: the model's own limit)")
    c.at_least(d, "num_workers", "data.num_workers", 0)
    c.at_most(d, "num_workers", "data.num_workers", limits.MAX_DATA_WORKERS, "per process")
    c.at_least(d, "image_size", "data.image_size", 8)
    c.at_least(d, "limit_train", "data.limit_train", 0)
    c.at_least(d, "limit_eval", "data.limit_eval", 0)
    _data_roles(c, d)
    _normalisation(c, d)
    if any(k < 0 for k in d.classes):
        c.fail("data.classes", "class ids must be >= 0")
    if len(set(d.classes)) != len(d.classes):
        c.fail("data.classes", "class ids must be unique")
    if d.classes and len(d.classes) < 2:
        c.fail("data.classes", "keep at least 2 classes")
    # The model and the data must be the same modality.
    m = spec.model
    if m.source == "hf" and image:
        c.fail("data.source", f"{d.source} is image data but model.source hf is a text model")
    if m.source == "torchvision" and d.source in C.TEXT_DATA_SOURCES:
        c.fail(
            "data.source", f"{d.source} is text data but model.source torchvision is an image model"
        )


def _data_roles(c: _Check, d) -> None:
    """Validation (data.eval, or carved from train) and test must be different data."""
    if d.source == "torchvision" and d.test:
        c.choice("data.test", d.test, ("test", "none"))
    if d.test and d.test != "none" and d.test == d.eval:
        c.fail(
            "data.test",
            f"{d.test!r} is also data.eval, the validation set that picks the checkpoint; "
            "the test set must be other data (or leave data.test out)",
        )
    c.within(d, "validation_fraction", "data.validation_fraction", 0.0, 1.0, high_open=True)
    if d.eval and d.validation_fraction > 0:
        c.fail(
            "data.validation_fraction",
            "carves validation from train, but data.eval already gives it; drop one of the two",
        )
    c.at_least(d, "validation_seed", "data.validation_seed", 0)
    c.at_least(d, "limit_test", "data.limit_test", 0)


def _normalisation(c: _Check, d) -> None:
    if not (d.mean or d.std):
        return
    if d.source not in C.IMAGE_DATA_SOURCES:
        c.fail("data.mean", "normalisation applies to image data only")
        return
    if not (d.mean and d.std):
        given, missing = ("mean", "std") if d.mean else ("std", "mean")
        c.fail(f"data.{missing}", f"required with data.{given}: give both or neither")
        return
    if len(d.mean) != len(d.std):
        c.fail("data.std", f"give as many values as data.mean ({len(d.mean)}), got {len(d.std)}")
    for name, values in (("mean", d.mean), ("std", d.std)):
        if len(values) not in (1, 3):
            c.fail(f"data.{name}", f"one value or one per channel (3), got {len(values)}")
    for i, v in enumerate(d.std):
        if not v > 0:
            c.fail(f"data.std[{i}]", f"must be > 0, got {v:g}")


def _finetune(c: _Check, spec) -> None:
    f = spec.finetune
    if f.strategy == "auto":  # proposed from the data by a command, not chosen per job
        c.fail(
            "finetune.strategy",
            "'auto' is not a strategy: `ftctl sweep suggest JOB.yaml` proposes which to try "
            f"for your data (a sweep file); {C.one_of(C.STRATEGIES)}",
        )
        ok = False
    else:
        ok = c.choice("finetune.strategy", f.strategy, C.STRATEGIES, required=False)
    strategy = f.strategy or "full"
    if ok and strategy in C.UNSUPPORTED_STRATEGIES:
        c.fail("finetune.strategy", f"{strategy!r} is not supported yet")
    if strategy == "last_k":
        if not f.HasField("k"):
            c.fail("finetune.k", "required with strategy: last_k (how many last blocks train)")
        elif f.k < 1:
            c.fail("finetune.k", f"must be >= 1, got {f.k}")
        else:
            # An hf folder's blocks are the environment check's (it reads the folder).
            source = spec.model.source
            blocks = body_block_count(source, spec.model.name) if source != "hf" else None
            if blocks is not None and f.k > blocks:
                c.fail(
                    "finetune.k",
                    f"{f.k} is larger than the model's {blocks} blocks "
                    f"({spec.model.name}); use at most {blocks}, or "
                    "strategy: full",
                )
    elif f.HasField("k"):
        c.fail("finetune.k", "only applies to strategy: last_k")
    if strategy == "patterns" and not (f.trainable or f.frozen):
        c.fail("finetune.trainable", "strategy: patterns needs trainable and/or frozen regexes")
    if strategy != "patterns" and (f.trainable or f.frozen):
        c.fail("finetune.trainable", "trainable/frozen only apply to strategy: patterns")
    for i, p in enumerate(f.trainable):
        c.regex(f"finetune.trainable[{i}]", p)
    for i, p in enumerate(f.frozen):
        c.regex(f"finetune.frozen[{i}]", p)
    c.at_least(f, "unfreeze_every", "finetune.unfreeze_every", 1)
    if f.HasField("unfreeze_every") and strategy != "gradual":
        c.fail("finetune.unfreeze_every", "only applies to strategy: gradual")
    c.at_least(f, "probe_epochs", "finetune.probe_epochs", 1)
    if f.HasField("probe_epochs"):
        if strategy != "lp_ft":
            c.fail("finetune.probe_epochs", "only applies to strategy: lp_ft")
        elif spec.train.HasField("epochs") and f.probe_epochs >= spec.train.epochs:
            c.fail(
                "finetune.probe_epochs",
                f"{f.probe_epochs} leaves no epoch for the full "
                f"fine-tune (train.epochs is {spec.train.epochs})",
            )
    c.at_least(f, "probe_lr", "finetune.probe_lr", 0.0, strict=True)
    if f.HasField("probe_lr") and strategy != "lp_ft":
        c.fail("finetune.probe_lr", "only applies to strategy: lp_ft")
    if f.HasField("lora") and strategy != "lora":
        c.fail("finetune.lora", "only applies to strategy: lora")
    elif strategy == "lora":
        _lora(c, spec)
    c.within(f, "layerwise_lr_decay", "finetune.layerwise_lr_decay", 0.0, 1.0, low_open=True)
    c.within(f, "head_lr_scale", "finetune.head_lr_scale", 0.0, 1000.0, low_open=True)
    c.choice("finetune.feature_cache", f.feature_cache, C.FEATURE_CACHE, required=False)
    for i, g in enumerate(f.lr_groups):
        if not g.pattern:
            c.fail(f"finetune.lr_groups[{i}].pattern", "required: a regex over parameter names")
        else:
            c.regex(f"finetune.lr_groups[{i}].pattern", g.pattern)
        if g.lr <= 0:
            c.fail(f"finetune.lr_groups[{i}].lr", f"must be > 0, got {g.lr:g}")


def _lora(c: _Check, spec) -> None:
    lora = spec.finetune.lora
    c.at_least(lora, "r", "finetune.lora.r", 1)
    c.at_least(lora, "alpha", "finetune.lora.alpha", 0.0, strict=True)
    c.within(lora, "dropout", "finetune.lora.dropout", 0.0, 1.0, high_open=True)
    seen: set[str] = set()
    for i, name in enumerate(lora.target_modules):
        path = f"finetune.lora.target_modules[{i}]"
        if not name.strip():
            c.fail(path, "empty; give a module name such as query (matches *.query)")
        elif name in seen:
            c.fail(path, f"{name!r} is listed twice")
        seen.add(name)


def _optimizer(c: _Check, o) -> None:
    c.choice("optimizer.name", o.name, C.OPTIMIZERS, required=False)
    name = o.name or "adamw"
    c.at_least(o, "lr", "optimizer.lr", 0.0, strict=True)
    c.at_least(o, "weight_decay", "optimizer.weight_decay", 0.0)
    c.within(o, "momentum", "optimizer.momentum", 0.0, 1.0, high_open=True)
    if name != "sgd" and o.momentum > 0:
        c.fail("optimizer.momentum", "only applies to sgd (adam/adamw use betas)")
    if o.nesterov and (name != "sgd" or not o.momentum > 0 and o.HasField("momentum")):
        c.fail("optimizer.nesterov", "needs optimizer sgd with momentum > 0")
    if o.betas:
        if name == "sgd":
            c.fail("optimizer.betas", "only applies to adam/adamw")
        if len(o.betas) != 2:
            c.fail("optimizer.betas", f"needs exactly 2 values, got {len(o.betas)}")
        for i, b in enumerate(o.betas):
            if not 0.0 <= b < 1.0:
                c.fail(f"optimizer.betas[{i}]", f"must be in [0, 1), got {b:g}")
    c.at_least(o, "eps", "optimizer.eps", 0.0, strict=True)


def _effective_lr(spec) -> float:
    o = spec.optimizer
    if o.HasField("lr"):
        return o.lr
    return default_lr(o.name or "adamw", spec.finetune.strategy)


def _schedule(c: _Check, spec) -> None:
    s = spec.schedule
    c.choice("schedule.name", s.name, C.SCHEDULES, required=False)
    c.at_least(s, "warmup_steps", "schedule.warmup_steps", 0)
    c.within(s, "warmup_ratio", "schedule.warmup_ratio", 0.0, 1.0, high_open=True)
    if s.HasField("warmup_steps") and s.HasField("warmup_ratio") and s.warmup_steps > 0:
        c.fail("schedule.warmup_ratio", "give warmup_steps or warmup_ratio, not both")
    c.at_least(s, "min_lr", "schedule.min_lr", 0.0)
    if s.HasField("min_lr") and s.min_lr > 0:
        if (s.name or "linear") != "cosine":
            c.fail("schedule.min_lr", "only applies to schedule cosine")
        elif s.min_lr >= _effective_lr(spec):
            c.fail("schedule.min_lr", f"must be below optimizer.lr ({_effective_lr(spec):g})")
    c.at_least(s, "step_size", "schedule.step_size", 1)
    c.within(s, "gamma", "schedule.gamma", 0.0, 1.0, low_open=True)


def _train(c: _Check, spec) -> None:
    t = spec.train
    c.at_least(t, "epochs", "train.epochs", 1)
    c.at_least(t, "max_steps", "train.max_steps", 0)
    c.at_least(t, "batch_size", "train.batch_size", 1)
    c.at_least(t, "grad_accum_steps", "train.grad_accum_steps", 1)
    c.at_least(t, "max_grad_norm", "train.max_grad_norm", 0.0)
    precision_ok = c.choice("train.precision", t.precision, C.PRECISIONS, required=False)
    if precision_ok and t.precision == "fp16" and spec.resources.gpus < 1:
        c.fail("train.precision", "fp16 needs a GPU (resources.gpus >= 1); use bf16 on CPU")
    c.at_least(t, "seed", "train.seed", 0)
    c.at_least(t, "log_every_steps", "train.log_every_steps", 1)
    c.at_least(t, "checkpoint_every_steps", "train.checkpoint_every_steps", 0)
    c.at_least(t, "checkpoint_every_minutes", "train.checkpoint_every_minutes", 0)
    c.at_least(t, "keep_checkpoints", "train.keep_checkpoints", 1)
    c.at_least(t, "max_restarts", "train.max_restarts", 0)


def _eval(c: _Check, spec) -> None:
    e = spec.eval
    c.choice("eval.metric", e.metric, C.EVAL_METRICS, required=False)
    c.at_least(e, "every_steps", "eval.every_steps", 0)
    c.at_least(e, "early_stopping_patience", "eval.early_stopping_patience", 0)
    c.at_least(e, "batch_size", "eval.batch_size", 1)
    d = spec.data
    fraction = d.validation_fraction if d.HasField("validation_fraction") else None
    if fraction is None:
        fraction = default_validation_fraction(d)
    if e.early_stopping_patience > 0 and not (d.eval or fraction > 0):
        c.fail(
            "eval.early_stopping_patience",
            "needs a validation set (data.eval, or data.validation_fraction of train)",
        )


def _resources(c: _Check, r) -> None:
    # gpus and processes are per node: a multi-node job (nodes > 1) runs `processes`
    # ranks on each of `nodes` workers, so the per-node rules apply to each of them.
    per_worker = "what one worker can offer"
    c.at_least(r, "gpus", "resources.gpus", 0)
    c.at_most(r, "gpus", "resources.gpus", limits.MAX_GPUS_PER_NODE, per_worker)
    c.at_least(r, "processes", "resources.processes", 1)
    c.at_most(r, "processes", "resources.processes", limits.MAX_PROCESSES_PER_NODE, per_worker)
    c.at_least(r, "nodes", "resources.nodes", 1)
    c.at_most(r, "nodes", "resources.nodes", limits.MAX_NODES, "workers one job may span")
    if r.HasField("processes") and r.gpus > 0 and r.processes > r.gpus:
        per_node = " per node" if r.nodes > 1 else ""
        c.fail(
            "resources.processes",
            f"{r.processes} processes on {r.gpus} GPUs{per_node}: use at most one process per GPU",
        )


def _compression(c: _Check, spec) -> None:
    if not spec.HasField("compression"):
        return
    comp = spec.compression
    if comp.HasField("prune"):
        p = comp.prune
        if not 0.0 < p.amount < 1.0:
            c.fail("compression.prune.amount", f"must be in (0, 1), got {p.amount:g}")
        c.choice("compression.prune.scope", p.scope, C.PRUNE_SCOPES, required=False)
        c.choice("compression.prune.method", p.method, C.PRUNE_METHODS, required=False)
        c.at_least(p, "recovery_steps", "compression.prune.recovery_steps", 0)
    if comp.HasField("quantize"):
        c.choice(
            "compression.quantize.method", comp.quantize.method, C.QUANTIZE_METHODS, required=False
        )
    if not (comp.HasField("prune") or comp.HasField("quantize")):
        c.fail("compression", "give prune and/or quantize")
