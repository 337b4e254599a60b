"""JobRunner on its own: a real child process (scripted_engine.py), events collected from
the `report` callback the daemon would send to the coordinator."""

from __future__ import annotations

import json
import threading
import time

from coordinator_helpers import make_spec, wait_for
from worker_helpers import pid_alive, scripted_command

from tunefleet.v1 import job_pb2
from tunefleet.worker.job_runner import EventTail, JobRunner


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
    assert "scripted engine: succeed" in (tmp_path / "out" / "engine.log").read_text()


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


def test_crash_fails_with_exit_code_and_relays_the_log_tail(tmp_path):
    reports = Reports()

    outcome = _runner(tmp_path, "crash").run(reports)

    assert outcome.state == job_pb2.FAILED
    assert outcome.reason == "training process exited with code 3: RuntimeError: boom"
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

    runner.stop()
    thread.join(timeout=10)

    assert result["outcome"].state == job_pb2.FAILED
    assert result["outcome"].reason == "worker stopped"


def test_a_job_that_is_no_longer_ours_is_abandoned_and_killed(tmp_path):
    reports = Reports()
    reports.refuse = True
    runner = _runner(tmp_path, "hang")

    assert runner.run(reports) is None
    assert len(reports.batches) == 1  # the "started" batch was refused
    pid_file = tmp_path / "out" / "grandchild.pid"
    if pid_file.exists():
        wait_for(lambda: not pid_alive(int(pid_file.read_text())), timeout=5)


def test_stop_before_start_runs_nothing(tmp_path):
    reports = Reports()
    runner = _runner(tmp_path, "hang")
    runner.stop()

    outcome = runner.run(reports)

    assert outcome.reason == "worker stopped"
    assert reports.batches == []
    assert not (tmp_path / "out" / "engine.log").exists()


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
