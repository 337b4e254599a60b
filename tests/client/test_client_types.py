"""Proto messages -> SDK dataclasses: every field arrives, unset optionals become None."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tunefleet.client import Event, Job, JobState, LogLine, Metrics, Report, StateChange, Worker
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=500_000_000)


def test_job_state_mirrors_the_proto_enum():
    names = [v.name for v in job_pb2.JobState.DESCRIPTOR.values if v.number != 0]
    assert [s.value for s in JobState] == names
    for s in JobState:
        assert JobState.from_proto(s.to_proto()) is s
        ended = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PRUNED}
        assert s.is_terminal() == (s in ended)
    assert JobState.parse("running") is JobState.RUNNING
    assert JobState.parse(job_pb2.QUEUED) is JobState.QUEUED
    assert JobState.RUNNING == "RUNNING" and f"{JobState.FAILED}" == "FAILED"
    with pytest.raises(ValueError, match="expected one of"):
        JobState.parse("finished")
    with pytest.raises(ValueError):
        JobState.from_proto(job_pb2.JOB_STATE_UNSPECIFIED)


def test_job_from_proto():
    spec = spec_pb2.JobSpec(name="sst2", priority=5)
    spec.model.source = "hf"
    msg = job_pb2.Job(
        id="job-1",
        spec=spec,
        state=job_pb2.SUCCEEDED,
        reason="finished",
        attempt=2,
        created_at=ts(1_700_000_000),
        started_at=ts(1_700_000_010),
        finished_at=ts(1_700_000_070),
        worker_id="w-1",
        artifacts={"model": "/a/model"},
        summary={"accuracy": 0.9},
        last_seq=42,
        cancel_requested=True,
    )
    job = Job.from_proto(msg)
    assert job.id == "job-1" and job.name == "sst2" and job.priority == 5
    assert job.state is JobState.SUCCEEDED and job.is_terminal()
    assert (job.reason, job.attempt, job.worker_id, job.last_seq) == ("finished", 2, "w-1", 42)
    assert job.created_at == datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=timezone.utc)
    assert job.duration_s == pytest.approx(60.0)
    assert job.artifacts == {"model": "/a/model"} and job.summary == {"accuracy": 0.9}
    assert job.spec == spec and job.cancel_requested
    assert job.updated_at is None
    # The dataclass holds a copy: changing the message later does not change the Job.
    msg.spec.name = "changed"
    assert job.spec.name == "sst2"


def test_job_never_started_has_no_times():
    job = Job.from_proto(job_pb2.Job(id="j", state=job_pb2.QUEUED))
    assert job.started_at is None and job.finished_at is None and job.duration_s is None


def test_event_payloads():
    def event(**kind) -> Event:
        return Event.from_proto(
            job_pb2.Event(job_id="j", seq=3, time=ts(1_700_000_000), attempt=1, **kind)
        )

    e = event(state_change=job_pb2.StateChange(state=job_pb2.RUNNING, reason="started"))
    assert e.kind == "state_change" and e.state_change == StateChange(JobState.RUNNING, "started")
    assert e.log is None and not e.is_terminal()
    assert (e.job_id, e.seq, e.attempt) == ("j", 3, 1)
    assert event(state_change=job_pb2.StateChange(state=job_pb2.FAILED)).is_terminal()

    e = event(log=job_pb2.LogLine(level="warning", message="slow"))
    assert e.log == LogLine("warning", "slow") and e.payload is e.log

    e = event(
        metrics=job_pb2.Metrics(
            phase="train",
            step=10,
            epoch=0.5,
            loss=0.7,
            lr=1e-4,
            lr_groups={"head": 1e-3},
            samples_per_s=50.0,
            total_steps=100,
        )
    )
    assert e.metrics == Metrics("train", 10, 0.5, 0.7, 1e-4, {"head": 1e-3}, 50.0, {}, 100)

    # proto3 `optional`: unset stays None, not 0.0.
    e = event(metrics=job_pb2.Metrics(phase="eval", step=10, values={"accuracy": 0.8}))
    assert e.metrics.loss is None and e.metrics.lr is None and e.metrics.samples_per_s is None
    assert e.metrics.values == {"accuracy": 0.8}

    rows = [job_pb2.ReportRow(cells=["embeddings", "1.2M", "no"])]
    e = event(report=job_pb2.Report(name="freeze_plan", columns=["block"], rows=rows, text="T"))
    assert e.report == Report("freeze_plan", ("block",), (("embeddings", "1.2M", "no"),), "T")


def test_event_without_a_body_does_not_break_followers():
    e = Event.from_proto(job_pb2.Event(job_id="j", seq=1))
    assert e.kind == "log" and e.log.level == "debug" and e.time is None


def test_worker_from_proto():
    msg = coordinator_pb2.Worker(
        id="w-1",
        hostname="gpu-box",
        resources=coordinator_pb2.WorkerResources(gpus=4, cpus=32, gpu_name="H100"),
        state=coordinator_pb2.LIVE,
        free_gpus=3,
        job_ids=["job-1"],
        last_heartbeat_age_s=1.5,
        address="10.0.0.2:1",
    )
    w = Worker.from_proto(msg)
    assert w == Worker("w-1", "gpu-box", 4, 3, "LIVE", ("job-1",), 1.5, 32, "H100", "10.0.0.2:1")


def test_multi_node_job_has_its_members():
    msg = job_pb2.Job(id="j", state=job_pb2.RUNNING, worker_id="w-a", rendezvous="10.0.0.1:29500")
    msg.members.add(rank=0, worker_id="w-a", address="10.0.0.1", state=job_pb2.RUNNING)
    msg.members.add(rank=1, worker_id="w-b", address="10.0.0.2", state=job_pb2.SUCCEEDED)
    job = Job.from_proto(msg)
    assert [(m.rank, m.worker_id, m.state) for m in job.members] == [
        (0, "w-a", JobState.RUNNING),
        (1, "w-b", JobState.SUCCEEDED),
    ]
    assert job.rendezvous == "10.0.0.1:29500" and job.members[1].address == "10.0.0.2"
    assert Job.from_proto(job_pb2.Job(id="one", state=job_pb2.QUEUED)).members == ()
