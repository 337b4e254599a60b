"""`ftctl plan`: a job's freeze plan, rendered, without data or training.

It builds the model (models.py) and plans it (freeze.py); it lives apart from both so that
neither imports the other.
"""

from __future__ import annotations

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import models
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.freeze import FreezePlan


def plan_table(spec: spec_pb2.JobSpec) -> str:
    """The freeze plan of a job, rendered.

    The head is sized from model.num_labels / model.labels, or 2 when neither is given (the
    data decides at run time; the body's blocks do not depend on it).
    """
    task = models.resolve_task(spec)
    try:
        n, labels = models.resolve_labels(spec)
    except InvalidJobInput:
        n, labels = 2, ["LABEL_0", "LABEL_1"]
    bundle = models.build_model(spec, task, n, labels)
    plan = FreezePlan.for_model(bundle.model, bundle.kind, spec.finetune, bundle.head_path)
    return plan.table(bundle.model)
