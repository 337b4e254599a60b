"""A multi-node job on two WorkerDaemons (scripted training processes): each member runs
its machine rank, and when one member goes away the other kills its training processes at
once and the gang is queued again as one."""

from __future__ import annotations

from coordinator_helpers import make_spec, state_changes, wait_for
from worker_helpers import pid_alive

from tunefleet.v1 import job_pb2


def _gang_spec():
    spec = make_spec("gang")
    spec.resources.nodes = 2
    spec.resources.processes = 1
    return spec


def test_a_member_leaving_stops_the_whole_gang(client, start_daemon, tmp_path):
    # Separate artifact roots only so that each scripted engine's pid file is its own.
    daemons = {
        name: start_daemon("hang", worker_id=name, artifacts_root=tmp_path / name)
        for name in ("w-1", "w-2")
    }
    job = client.submit(_gang_spec())
    placed = wait_for(lambda: (j := client.get(job.id)).state == job_pb2.RUNNING and j, 10)
    rank0, rank1 = (m.worker_id for m in placed.members)
    pid_files = {name: tmp_path / name / job.id / "grandchild.pid" for name in daemons}
    wait_for(lambda: all(p.exists() for p in pid_files.values()), timeout=10)
    survivor = int(pid_files[rank0].read_text())

    def messages() -> list[str]:
        return [e.log.message for e in client.events(job.id) if e.HasField("log")]

    wait_for(lambda: messages().count("training") == 2, timeout=5)  # both machines relayed
    assert any(f"started on worker {rank1}, machine rank 1 of 2" in m for m in messages())
    # Both scripted engines wrote a freeze_plan report: only rank 0's counts.
    assert sum(e.HasField("report") for e in client.events(job.id)) == 1

    daemons[rank1].stop()  # drains: its part is released, so the whole gang stops

    wait_for(lambda: not pid_alive(survivor), timeout=5)
    requeued = client.get(job.id)
    assert requeued.state == job_pb2.QUEUED and requeued.restarts == 0
    assert state_changes(client.events(job.id))[3][0] == "QUEUED"
    assert {m.worker_id: m.state for m in requeued.members}[rank1] == job_pb2.QUEUED
    # Rank 0's worker is free again (nothing placed: one worker is not enough).
    wait_for(lambda: not client.workers()[rank0].job_ids, timeout=5)
    assert client.get(job.id).attempt == 1
