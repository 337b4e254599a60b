"""`ftctl plan`: a job's freeze plan, rendered, without data or training.

It builds the model (models.py) and plans it (freeze.py); it lives apart from both so that
neither imports the other.
"""

from __future__ import annotations

import os

from tunefleet.spec.data_files import count_classes
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import models
from tunefleet.worker.engine.data.images import image_folder_classes
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.freeze import FreezePlan

# The classes of the torchvision datasets data.name accepts (choices.TORCHVISION_DATASETS).
_TORCHVISION_CLASSES = {"FashionMNIST": 10, "MNIST": 10, "CIFAR10": 10, "CIFAR100": 100}


def plan_table(spec: spec_pb2.JobSpec) -> str:
    """The freeze plan of a job, rendered.

    The head is sized as the run will size it: from model.num_labels / model.labels, else
    data.classes, else the labels in the train file (a cheap pass, tunefleet.spec.data_files),
    an image folder's class folders or a torchvision dataset's classes; 2 only when none of
    these can tell (a hub dataset). The body's blocks do not depend on it.

    Nor do they depend on a torchvision model's weights: the architecture is built without
    them, so a plan needs no download (AlexNet's are 230 MB) and works offline.
    """
    task = models.resolve_task(spec)  # reads the weights' metadata only, no download
    n, labels = head_labels(spec)
    if spec.model.source == "torchvision" and spec.model.weights:
        spec = spec_pb2.JobSpec.FromString(spec.SerializeToString())
        spec.model.ClearField("weights")
    bundle = models.build_model(spec, task, n, labels)
    plan = FreezePlan.for_model(bundle.model, bundle.kind, spec.finetune, bundle.head_path)
    return plan.table(bundle.model)


def head_labels(spec: spec_pb2.JobSpec) -> tuple[int, list[str]]:
    """(number of classes, names) for the head `ftctl plan` shows; see plan_table."""
    try:
        return models.resolve_labels(spec)
    except InvalidJobInput:
        pass
    d = spec.data
    if d.classes:
        return models.resolve_labels(spec, len(d.classes))
    counted = count_classes(d.train, d.source, d.label_column or "label") if d.train else None
    if counted is not None:
        return models.resolve_labels(spec, *counted)
    if d.source == "imagefolder" and d.root:
        names = image_folder_classes(os.path.join(d.root, d.train or "train"))
        if names:
            return models.resolve_labels(spec, len(names), names)
    if d.source == "torchvision" and d.name in _TORCHVISION_CLASSES:
        return models.resolve_labels(spec, _TORCHVISION_CLASSES[d.name])
    return 2, ["LABEL_0", "LABEL_1"]
