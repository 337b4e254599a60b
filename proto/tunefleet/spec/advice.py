"""`ftctl sweep suggest`: a small search space for a job, from its data's size and model.

Why a rule at all: which layers to train is the question the method poses, and the answer
depends most on how many examples each class has. With a handful per class, training the
pretrained layers from a random head distorts them; a linear probe followed by a gentle
fine-tune (lp_ft) keeps them and wins, the probe alone (head_only) next; with hundreds per
class, full fine-tuning and the last blocks win (Kornblith et al. 2019; Kumar et al. 2022,
LP-FT). So the proposal orders the strategies by
that prior, sweeps the learning rate of the first one (the knob that matters most, around
the job's own value), and leaves each other strategy at its own default lr. The first grid
point is the "first pick": the run to make if only one is made.

Pure: the sizes come in (`data_size` reads local CSV / JSON-lines files through the
validator's streaming reader, and knows the torchvision sets' sizes); nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunefleet.spec import data_files
from tunefleet.spec.defaults import default_lr
from tunefleet.v1 import spec_pb2

# Few / many examples per class: below FEW a probe first, from MANY on full fine-tuning first.
FEW_PER_CLASS = 20
MANY_PER_CLASS = 100
# The swept lr: the job's own (or default) lr, then these multiples of it.
LR_FACTORS = (1.0, 0.4, 2.0)

# Training-set sizes and class counts of the torchvision data sets the engine reads.
TORCHVISION_SIZES = {
    "cifar10": (50_000, 10),
    "cifar100": (50_000, 100),
    "mnist": (60_000, 10),
    "fashionmnist": (60_000, 10),
    "kmnist": (60_000, 10),
    "emnist": (112_800, 47),
    "svhn": (73_257, 10),
    "stl10": (5_000, 10),
}


@dataclass(frozen=True)
class DataSize:
    """Training examples and classes, each None when the client cannot tell."""

    examples: int | None
    classes: int | None
    source: str  # where the figures come from, for the explanation

    @property
    def per_class(self) -> float | None:
        if not self.examples or not self.classes:
            return None
        return self.examples / self.classes


@dataclass(frozen=True)
class Suggestion:
    space: dict  # sweep.space, in the YAML shorthand the sweep parser reads
    first: dict  # the first grid point: the one run to make if only one is made
    why: str  # one line


def data_size(spec: spec_pb2.JobSpec) -> DataSize:
    """What the client can learn of the training set without loading it."""
    d = spec.data
    examples = classes = None
    source = "the data is read by the worker"
    if d.source in data_files.READABLE_SOURCES and d.train:
        try:
            labels = data_files.read_labels(d.train, d.source, d.label_column or "label")
        except (OSError, data_files.DataFileError, ValueError):
            labels = None
        if labels is not None and labels.complete:
            examples, classes = labels.rows, len(labels.first_line)
            source = d.train.rsplit("/", 1)[-1]
    elif d.source == "torchvision" and d.name.lower() in TORCHVISION_SIZES:
        examples, classes = TORCHVISION_SIZES[d.name.lower()]
        if d.classes:
            examples = examples * len(d.classes) // classes
            classes = len(d.classes)
        source = f"torchvision {d.name}"
    if examples is not None and d.limit_train:
        examples = min(examples, d.limit_train)
    if spec.model.labels:
        classes = len(spec.model.labels)
    return DataSize(examples, classes, source)


def suggest(spec: spec_pb2.JobSpec, size: DataSize) -> Suggestion:
    """The proposal for `spec` (a job without a sweep block) given its data's size."""
    per_class = size.per_class
    if per_class is None:
        order, regime = ["lp_ft", "last_k", "full", "head_only"], "size unknown"
    elif per_class < FEW_PER_CLASS:
        # A probe, then a gentle fine-tune of everything: measured, not assumed. 8 per class
        # of 26 Debian sections (bench/sweep_suggest.py): lp_ft 0.490 (its probe at
        # probe_lr), the probe alone 0.392 at its default lr (0.426 at 2x), last_k 0.398.
        # So lp_ft leads, the probe follows.
        order, regime = ["lp_ft", "head_only", "last_k"], "few per class"
    elif per_class < MANY_PER_CLASS:
        order, regime = ["lp_ft", "last_k", "full", "head_only"], "some per class"
    else:
        order, regime = ["full", "last_k", "lp_ft"], "many per class"
    first = order[0]
    optimizer = spec.optimizer.name or "adamw"
    base = spec.optimizer.lr if spec.optimizer.HasField("lr") and first != "head_only" else 0.0
    base = base or default_lr(optimizer, first)
    lrs = [float(f"{base * f:.3g}") for f in LR_FACTORS]
    space: dict = {
        "finetune.strategy": order,
        "optimizer.lr": {"values": lrs, "when": {"finetune.strategy": first}},
    }
    if "last_k" in order:
        space["finetune.k"] = {"values": [2], "when": {"finetune.strategy": "last_k"}}
    if per_class is None:
        seen = f"{size.source}: {regime}"
    else:
        seen = (
            f"{size.examples:,} training examples, {size.classes} classes "
            f"({per_class:,.0f} per class, {size.source})"
        )
    why = (
        f"{seen} -> {first} first at lr {lrs[0]:g} (also {lrs[1]:g}, {lrs[2]:g}), "
        f"then {', '.join(order[1:])} at their default lr"
    )
    return Suggestion(space, {"finetune.strategy": first, "optimizer.lr": lrs[0]}, why)
