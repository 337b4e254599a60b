"""JobRunner on its own: a real child process (scripted_engine.py), events collected from
the `report` callback the daemon would send to the coordinator."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from coordinator_helpers import make_spec, wait_for
from worker_helpers import pid_alive, scripted_command

from tunefleet.v1 import job_pb2
from tunefleet.worker.event_tail import EventTail
from tunefleet.worker.job_runner import JobRunner


def _job(name: str = "runner-test") -> job_pb2.Job:
    return job_pb2.Job(id="job-0000cafe", spec=make_spec(name), attempt=1)


class Reports:
    """Collects reported batches; answers False once `refuse` is set (job not ours)."""

    def __init__(self) -> None:
        self.batches: list[list[job_pb2.Event]] = []
        self.refuse = False

    def __call__(self, events: list[job_pb2.Event]) -> bool:
        self.batches.append(list(events))
        return not self.refuse

    @property
    def events(self) -> list[job_pb2.Event]:
        return [e for batch in self.batches for e in batch]

    def messages(self) -> list[str]:
        return [e.log.message for e in self.events if e.WhichOneof("kind") == "log"]


def _runner(tmp_path, mode: str, **kw) -> JobRunner:
    return JobRunner(
        _job(),
        1,
        worker_id="w-test",
        out_dir=tmp_path / "out",
        command_factory=scripted_command(mode),
        **kw,
    )


def test_success_relays_events_and_reads_the_result(tmp_path):
    reports = Reports()

    outcome = _runner(tmp_path, "succeed").run(reports)

    assert outcome.state == job_pb2.SUCCEEDED
    assert outcome.artifacts == {"model": str(tmp_path / "out" / "model")}
    assert outcome.summary == {"accuracy": 0.75, "steps": 2.0}
    kinds = [e.WhichOneof("kind") for e in reports.events]
    assert kinds == ["log", "report", "metrics", "log"]
    assert reports.messages()[0].startswith("started on worker w-test (pid ")
    assert reports.events[2].metrics.loss == 0.7
    assert all(e.time.seconds > 0 for e in reports.events)
    spec = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert spec["name"] == "runner-test"
    engine_log = tmp_path / "out" / "attempts" / "1" / "engine.log"
    assert "scripted engine: succeed" in engine_log.read_text()
    assert (tmp_path / "out" / "attempts" / "1" / "events.jsonl").exists()


def test_many_events_go_out_in_batches(tmp_path):
    reports = Reports()

    outcome = _runner(tmp_path, "chatty", report_max_events=50).run(reports)

    assert outcome.state == job_pb2.SUCCEEDED
    assert all(len(batch) <= 50 for batch in reports.batches)
    lines = [m for m in reports.messages() if m.startswith("line ")]
    assert lines == [f"line {i}" for i in range(120)]


def test_invalid_input_fails_with_the_engines_message(tmp_path):
    reports = Reports()

    outcome = _runner(tmp_path, "invalid").run(reports)

    assert outcome.state == job_pb2.FAILED
    assert outcome.reason == "data.train: no such file /data/train.csv"
    assert not outcome.retryable  # retrying cannot fix the input


def test_crash_fails_with_exit_code_and_relays_the_log_tail(tmp_path):
    reports = Reports()

    outcome = _runner(tmp_path, "crash").run(reports)

    assert outcome.state == job_pb2.FAILED
    assert outcome.reason == "training process exited with code 3: RuntimeError: boom"
    assert outcome.retryable  # a crash: the coordinator may restart it
    messages = reports.messages()
    assert messages[-3:] == [
        "scripted engine: crash for runner-test",
        "Traceback (most recent call last):",
        "RuntimeError: boom",
    ]
    assert all(e.log.level == "error" for e in reports.events[-4:])


def test_cancel_kills_the_whole_process_group(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "hang")
    result = {}
    thread = threading.Thread(target=lambda: result.update(outcome=runner.run(reports)))
    thread.start()
    pid_file = tmp_path / "out" / "grandchild.pid"
    wait_for(lambda: "training" in reports.messages() and pid_file.exists(), timeout=10)
    grandchild = int(pid_file.read_text())

    started = time.monotonic()
    runner.cancel()
    thread.join(timeout=10)

    assert result["outcome"].state == job_pb2.CANCELLED
    assert result["outcome"].reason == "cancelled by user"
    assert time.monotonic() - started < 3
    wait_for(lambda: not pid_alive(grandchild), timeout=5)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "stubborn", kill_grace_s=0.5)
    result = {}
    thread = threading.Thread(target=lambda: result.update(outcome=runner.run(reports)))
    thread.start()
    wait_for(lambda: "training" in reports.messages(), timeout=10)

    runner.cancel()
    thread.join(timeout=10)

    assert result["outcome"].state == job_pb2.CANCELLED


def _run_in_thread(runner: JobRunner, reports: Reports) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(outcome=runner.run(reports)))
    thread.start()
    wait_for(lambda: "training" in reports.messages(), timeout=10)
    return thread, result


def test_drain_lets_the_engine_checkpoint_then_releases_the_job(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "preemptible", drain_grace_s=10)
    thread, result = _run_in_thread(runner, reports)

    runner.drain("worker w-test is shutting down (drained)")
    thread.join(timeout=10)

    assert result["outcome"].state == job_pb2.QUEUED
    assert result["outcome"].reason == "worker w-test is shutting down (drained)"
    assert reports.messages()[-1] == "SIGTERM: checkpoint saved"  # relayed before the end


def test_a_drain_the_engine_ignores_is_cut_short(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "stubborn", drain_grace_s=0.5)
    thread, result = _run_in_thread(runner, reports)

    runner.drain()
    thread.join(timeout=10)

    assert result["outcome"].state == job_pb2.QUEUED


def test_sigterm_from_elsewhere_is_a_preemption_not_a_crash(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "preemptible")
    thread, result = _run_in_thread(runner, reports)
    pid = int(reports.messages()[0].split("(pid ")[1].rstrip(")"))

    os.kill(pid, signal.SIGTERM)  # e.g. the machine is being taken away
    thread.join(timeout=10)

    assert result["outcome"].state == job_pb2.QUEUED
    assert "preempted (SIGTERM)" in result["outcome"].reason


def test_a_lost_lease_kills_the_training_process_at_once(tmp_path):
    reports = Reports()
    lease = {"valid": True}
    runner = _runner(tmp_path, "preemptible", lease_valid=lambda: lease["valid"])
    thread, result = _run_in_thread(runner, reports)

    lease["valid"] = False
    thread.join(timeout=10)

    assert result["outcome"].state == job_pb2.QUEUED
    assert "could not renew its lease" in result["outcome"].reason
    # SIGKILL, not SIGTERM: no checkpoint may race the attempt that replaces this one.
    assert "SIGTERM: checkpoint saved" not in reports.messages()
    wait_for(lambda: not pid_alive(int((tmp_path / "out" / "grandchild.pid").read_text())), 5)


def test_abandon_kills_and_reports_nothing_more(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "preemptible")
    thread, result = _run_in_thread(runner, reports)
    sent = len(reports.batches)

    runner.abandon()
    thread.join(timeout=10)

    assert result["outcome"] is None
    assert len(reports.batches) == sent


def test_a_job_that_is_no_longer_ours_is_abandoned_and_killed(tmp_path):
    reports = Reports()
    reports.refuse = True
    runner = _runner(tmp_path, "hang")

    assert runner.run(reports) is None
    assert len(reports.batches) == 1  # the "started" batch was refused
    pid_file = tmp_path / "out" / "grandchild.pid"
    if pid_file.exists():
        wait_for(lambda: not pid_alive(int(pid_file.read_text())), timeout=5)


def test_drain_before_start_runs_nothing(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "hang")
    runner.drain("draining")

    outcome = runner.run(reports)

    assert (outcome.state, outcome.reason) == (job_pb2.QUEUED, "draining")
    assert reports.batches == []
    assert not (tmp_path / "out" / "attempts" / "1" / "engine.log").exists()


def test_event_tail_skips_old_lines_and_waits_for_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"log": {"message": "old attempt"}}\n{"log": {"mess')  # crashed mid-line

    tail = EventTail(path)
    assert tail.read() == []
    with path.open("a") as f:
        f.write('{"log": {"message": "new"}}\n{"log": {"message": "half')
    assert [e.log.message for e in tail.read()] == ["new"]
    with path.open("a") as f:
        f.write('"}}\nnot json\n')
    assert [e.log.message for e in tail.read()] == ["half"]


def test_a_resumed_attempt_resends_the_metrics_its_predecessor_left_unsent(tmp_path):
    """attempt 1 (killed) wrote steps 8..11 but died before relaying them; attempt 2
    resumes from the checkpoint at step 10 and sends 8..10 again (the coordinator keeps
    the ones it has not seen); 11 is trained again, so it is not resent."""
    out = tmp_path / "out"
    (out / "checkpoints" / "step-0000010").mkdir(parents=True)
    (out / "checkpoints" / "step-0000010" / "MANIFEST.json").write_text("{}")
    (out / "checkpoints" / "step-0000020.tmp").mkdir()  # incomplete: not resumed from
    old = out / "attempts" / "1" / "events.jsonl"
    old.parent.mkdir(parents=True)
    lines = [
        json.dumps({"metrics": {"phase": phase, "step": str(step)}})
        for phase, step in (("train", 8), ("train", 9), ("train", 10), ("eval", 10), ("train", 11))
    ]
    old.write_text("\n".join(lines) + '\n{"metrics": {"pha')  # died mid-line
    reports = Reports()
    runner = JobRunner(
        _job(), 2, worker_id="w-test", out_dir=out, command_factory=scripted_command("succeed")
    )

    assert runner.run(reports).state == job_pb2.SUCCEEDED

    first = reports.batches[0]
    assert first[0].log.message.startswith("started on worker w-test")
    resent = [(e.metrics.phase, e.metrics.step) for e in first[1:5]]
    assert resent == [("train", 8), ("train", 9), ("train", 10), ("eval", 10)]
    assert ("train", 11) not in [(e.metrics.phase, e.metrics.step) for e in reports.events]
