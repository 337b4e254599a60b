"""Whose checkpoints these are: the job id and a hash of the spec fields that shape training.

Every checkpoint's MANIFEST.json records both; a run resumes only from checkpoints of the
same job with the same training-shaping spec. Without this, a job given another job's
output folder "resumed" from that job's finished checkpoint and SUCCEEDED with its metrics
and its exact weights.

What shapes training: the model, data, freezing, optimizer, schedule, evaluation and the
training settings, with the global batch counted as batch_size x grad_accum_steps (OOM
recovery trades one for the other and must still resume). Not: the name, labels, priority,
resources, output folder, compression (applied after training), and the settings that only
say how often to log or checkpoint and how many restarts are allowed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from tunefleet.v1 import spec_pb2

JOB_ID_ENV = "TUNEFLEET_JOB_ID"  # set by the worker's JobRunner for the training process
# The hash of the spec as submitted, set by the JobRunner: the engine's spec names this
# worker's cached copies of the URLs, at paths of its own (its input cache), and a job
# resumed on another worker from uploaded checkpoints is still the same job.
SPEC_HASH_ENV = "TUNEFLEET_SPEC_HASH"


def spec_hash(spec: spec_pb2.JobSpec) -> str:
    shaping = spec_pb2.JobSpec()
    shaping.CopyFrom(spec)
    for field in ("name", "labels", "priority", "resources", "output", "compression"):
        shaping.ClearField(field)
    train = shaping.train
    train.batch_size = max(spec.train.batch_size, 1) * max(spec.train.grad_accum_steps, 1)
    for field in (
        "grad_accum_steps",
        "log_every_steps",
        "checkpoint_every_steps",
        "checkpoint_every_minutes",
        "keep_checkpoints",
        "max_restarts",
    ):
        train.ClearField(field)
    shaping.eval.ClearField("batch_size")
    return hashlib.sha256(shaping.SerializeToString(deterministic=True)).hexdigest()[:32]


def identity(spec: spec_pb2.JobSpec) -> dict[str, str]:
    """What this run writes into its checkpoints' manifests."""
    submitted = os.environ.get(SPEC_HASH_ENV) or spec_hash(spec)
    return {"job_id": os.environ.get(JOB_ID_ENV, ""), "spec_hash": submitted}


def mismatch(manifest: Mapping[str, Any], ours: Mapping[str, str]) -> str | None:
    """Why a checkpoint with `manifest` is not ours to resume from, or None. A manifest
    from before these fields were recorded has neither and is accepted."""
    theirs = manifest.get("job_id") or ""
    if theirs and ours["job_id"] and theirs != ours["job_id"]:
        return f"they belong to job {theirs}, not to this job ({ours['job_id']})"
    recorded = manifest.get("spec_hash") or ""
    if recorded and recorded != ours["spec_hash"]:
        return (
            "they were written by a run with a different spec (model, data, freezing, "
            "optimizer, schedule or training settings differ)"
        )
    return None
