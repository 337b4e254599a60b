"""`ftctl` end to end: through main() (captured output) and as the installed console script.

Exit codes and one-line errors are part of the interface: scripts and CI depend on them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from client_helpers import (
    BAD_PATHS,
    BAD_SUBMIT_PATHS,
    needs_coordinator,
    unused_port,
)

from tunefleet.client.cli import build_parser, main
from tunefleet.v1 import job_pb2

FTCTL = Path(sys.executable).parent / "ftctl"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def submitted_id(out: str) -> str:
    match = re.search(r"submitted job (\S+)", out)
    assert match, out
    return match.group(1)


# --- no coordinator needed ------------------------------------------------------------


def test_validate_ok(capsys, job_yaml):
    code, out, err = run_cli(capsys, "validate", job_yaml)
    assert (code, err) == (0, "")
    assert out.strip() == f"ok: {job_yaml} (client-test)"


def test_validate_lists_every_problem_and_exits_1(capsys, bad_yaml, job_yaml):
    code, out, err = run_cli(capsys, "validate", bad_yaml, job_yaml)
    assert code == 1
    assert f"invalid: {bad_yaml} (5 problems)" in err
    for path in BAD_PATHS:
        assert re.search(rf"^  {re.escape(path)}: .+", err, re.M), (path, err)
    assert f"ok: {job_yaml}" in out  # the other file is still checked


def test_validate_a_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "validate", tmp_path / "nope.yaml")
    assert code == 1
    assert "no such file" in err and "Traceback" not in err


def test_unreachable_coordinator_is_one_clear_line(capsys):
    addr = f"127.0.0.1:{unused_port()}"
    code, out, err = run_cli(capsys, "jobs", "--coordinator", addr, "--connect-timeout", "0.3")
    assert code == 1 and out == ""
    waiting, final = err.strip().splitlines()
    assert waiting.startswith(f"waiting for coordinator at {addr}...")
    assert final == (
        f"error: cannot reach coordinator at {addr}. Start one on this machine with `ftctl up` "
        "(or `ftctl server`), or point ftctl at yours with --coordinator HOST:PORT or "
        "$TUNEFLEET_COORDINATOR"
    )


def test_coordinator_from_the_environment(capsys, monkeypatch):
    addr = f"127.0.0.1:{unused_port()}"
    monkeypatch.setenv("TUNEFLEET_COORDINATOR", addr)
    code, _, err = run_cli(capsys, "--connect-timeout", "0", "workers")
    assert code == 1 and f"cannot reach coordinator at {addr}" in err


def test_bad_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["submit"])
    assert info.value.code == 2


def test_run_without_the_worker_extra_says_what_to_install(job_yaml):
    # `None` in sys.modules makes `import torch` fail the way a missing package does.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from tunefleet.client.cli import main\n"
        f"sys.exit(main(['run', {str(job_yaml)!r}, '--out', {str(job_yaml.parent / 'out')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'tunefleet[worker]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_console_script_validate(bad_yaml):
    proc = subprocess.run(
        [str(FTCTL), "validate", str(bad_yaml)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    for path in BAD_PATHS:
        assert f"  {path}: " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_console_script_help_documents_exit_codes():
    proc = subprocess.run([str(FTCTL), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout and "130" in proc.stdout


# --- against a real coordinator -------------------------------------------------------


@needs_coordinator
def test_console_script_get_unknown_job(cluster):
    proc = subprocess.run(
        [str(FTCTL), "get", "job-nonexistent", "--coordinator", cluster.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: job job-nonexistent not found"
    assert proc.stdout == ""


@needs_coordinator
def test_submit_get_jobs_logs_cancel(capsys, cluster, job_yaml):
    addr = cluster.address
    code, out, _ = run_cli(capsys, "--coordinator", addr, "submit", job_yaml, "--priority", "3")
    assert code == 0
    job_id = submitted_id(out)
    assert f"ftctl logs {job_id} -f --coordinator {addr}" in out

    code, out, _ = run_cli(capsys, "get", job_id, "--coordinator", addr)
    assert code == 0
    assert job_id in out and "QUEUED" in out and "priority  3" in out

    code, out, _ = run_cli(capsys, "submit", job_yaml, "-q", "--coordinator", addr)
    assert code == 0 and re.fullmatch(r"\S+\n", out) and out.strip() != job_id

    code, out, _ = run_cli(capsys, "get", job_id, "--json", "--coordinator", addr)
    data = json.loads(out)
    assert data["state"] == "QUEUED" and data["spec"]["priority"] == 3

    code, out, _ = run_cli(capsys, "jobs", "--state", "queued,running", "--coordinator", addr)
    assert code == 0 and job_id in out
    code, out, _ = run_cli(capsys, "jobs", "--state", "succeeded", "--coordinator", addr)
    assert out.strip() == "no jobs in state succeeded"

    code, out, _ = run_cli(capsys, "cancel", job_id, "--reason", "typo", "--coordinator", addr)
    assert code == 0 and f"job {job_id}: CANCELLED typo" in out

    code, out, _ = run_cli(capsys, "logs", job_id, "--coordinator", addr)
    assert code == 0
    assert out.splitlines() == ["QUEUED submitted", "CANCELLED typo"]
    code, out, _ = run_cli(capsys, "logs", job_id, "--after", "1", "--coordinator", addr)
    assert out.splitlines() == ["CANCELLED typo"]

    # Cancelling a finished job is refused with the coordinator's reason, not a traceback.
    code, _, err = run_cli(capsys, "cancel", job_id, "--coordinator", addr)
    assert code == 1 and err.startswith("error: ") and "CANCELLED" in err


@needs_coordinator
def test_submit_of_an_invalid_job_prints_every_problem(capsys, cluster, bad_yaml):
    code, out, err = run_cli(capsys, "--coordinator", cluster.address, "submit", bad_yaml)
    assert code == 1 and out == ""
    for path in BAD_SUBMIT_PATHS:
        assert f"  {path}: " in err
    with cluster.client() as client:
        assert client.list() == []


# Every verb, given a bad input: exit 1 with one clear line (exit 2 with argparse's usage
# for a bad command line), never a traceback. `{addr}` is the test coordinator, `{tmp}` a
# fresh folder.
BAD_INPUTS = [
    (["validate", "{tmp}/nope.yaml"], 1, "no such file"),
    (["submit", "{tmp}/nope.yaml"], 1, "no such file"),
    (["submit", "{tmp}/nope.yaml", "--priority", str(2**40)], 2, "--priority: must be from"),
    (["jobs", "--state", "bogus"], 1, "unknown job state 'bogus'"),
    (["jobs", "--limit", str(2**40)], 2, "--limit: must be from"),
    (["get", "job-nope"], 1, "job job-nope not found"),
    (["logs", "job-nope"], 1, "job job-nope not found"),
    (["logs", "job-nope", "--after", str(2**70)], 2, "--after: must be from"),
    (["cancel", "job-nope"], 1, "job job-nope not found"),
    (["workers", "--token-file", "{tmp}/nope"], 1, "cannot read token file"),
    (["worker", "drain"], 1, "which worker?"),
    (["worker", "drain", "w-nope"], 1, "worker w-nope not found"),
    (["worker", "--gpus", "-1"], 1, "--gpus must be >= 0, got -1"),
    (["worker", "--drain-grace-s", "-1"], 1, "--drain-grace-s must be >= 0"),
    (["worker", "--artifacts-uri", "nosuchfs://x"], 1, "--artifacts-uri: nosuchfs://x"),
    # A plain path or a scheme typo was a folder relative to the worker's cwd.
    (["worker", "--artifacts-uri", "s3:/b/art"], 1, "did you mean s3://b/art?"),
    (["worker", "--artifacts-uri", "art"], 1, "--artifacts-uri: art: not a URL; give the"),
    (["worker", "--artifacts-uri", "file://rel/a"], 1, "file:// needs an absolute path"),
    (["server", "--db", "{tmp}/db", "--lease-s", "1"], 1, "--lease-s (1.0) must be longer"),
    (["server", "--db", "{tmp}/db", "--tls-cert", "x.pem"], 1, "give both --tls-cert"),
    (
        ["server", "--listen", "127.0.0.1:0", "--db", "{tmp}/db", "--storage-uri", "s3:/b/in"],
        1,
        "--storage-uri s3:/b/in: not a URL (slashes missing after s3:): did you mean s3://b/in?",
    ),
    (
        ["server", "--listen", "127.0.0.1:0", "--db", "{tmp}/db", "--storage-uri", "s4://b/in"],
        1,
        "--storage-uri s4://b/in: s4:// is not supported; use one of s3://",
    ),
    (["up", "--listen", "0.0.0.0:0", "--db", "{tmp}/db"], 1, "serves this machine only"),
    (["up", "--listen", "127.0.0.1:0", "--db", "{tmp}"], 1, "is a folder; give the database"),
    (["server", "--listen", "127.0.0.1:0", "--db", "{tmp}"], 1, "is a folder; give the database"),
    # Not a database: "internal error: DatabaseError: file is not a database" (a bug of ftctl).
    (["server", "--listen", "127.0.0.1:0", "--db", "{tmp}/job.yaml"], 1, "job.yaml: it is not an"),
    (["up", "--listen", "127.0.0.1:0", "--db", "{tmp}/job.yaml"], 1, "job.yaml: it is not an SQL"),
    # The worker's own usage text and "the local worker exited with code 2", after a start.
    (["up", "--listen", "127.0.0.1:0", "--gpus", "-1"], 2, "--gpus: must be from 0"),
    (["up", "--worker-timeout", "-5"], 2, "--worker-timeout: expected seconds, 0 or more"),
    (["token", " "], 1, "NAME: required"),
    (["token", "ci", "--role", "root"], 2, "invalid choice: 'root'"),
    (["run", "{tmp}/nope.yaml"], 1, "no such file"),
    (["run", "{tmp}/job.yaml", "--out", "{tmp}/train.csv"], 1, "train.csv: is a file, not a"),
    (["plan", "{tmp}/nope.yaml"], 1, "no such file"),
    (["plot", "job-nope"], 1, "job job-nope not found"),
    (["artifacts", "job-nope"], 1, "job job-nope not found"),
    (["sweep", "get", "sweep-nope"], 1, "sweep sweep-nope not found"),
    (["sweep", "submit"], 1, "ftctl sweep submit FILE: which one?"),
    (["sweep", "submit", "{tmp}/nope.yaml"], 1, "no such file"),
    (["sweep", "cancel", "sweep-nope"], 1, "sweep sweep-nope not found"),
    (["sweep", "bogus"], 2, "invalid choice: 'bogus'"),
    (["compare", "job-nope"], 1, "job job-nope not found"),
    (["compare", "sweep-nope", "--json"], 1, "sweep sweep-nope not found"),
    (["dashboard", "--listen", "0.0.0.0:0"], 1, "give --https-cert PEM --https-key PEM"),
]


def test_bad_inputs_cover_every_verb():
    verbs = {
        a.dest
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for a in action._choices_actions
    }
    assert verbs == {argv[0] for argv, _, _ in BAD_INPUTS}


@needs_coordinator
@pytest.mark.parametrize(
    ("argv", "exit_code", "message"), BAD_INPUTS, ids=[" ".join(a[:2]) for a, _, _ in BAD_INPUTS]
)
def test_every_verb_refuses_bad_input_without_a_traceback(
    capsys, cluster, tmp_path, job_yaml, argv, exit_code, message
):
    argv = [a.format(addr=cluster.address, tmp=tmp_path) for a in argv]
    try:
        # Before the verb: the verbs that talk to no coordinator do not take these flags.
        code = main(["--coordinator", cluster.address, "--connect-timeout", "2", *argv])
    except SystemExit as exit:  # argparse: a bad command line
        code = exit.code
    out, err = capsys.readouterr()
    assert code == exit_code, (out, err)
    assert message in err and "Traceback" not in err + out, err
    if exit_code == 1:
        assert err.startswith(("error: ", "invalid: ")), err


def _drive(worker, final_state, events=()):
    job_id, attempt = worker.acquire()
    if events:
        worker.report(job_id, attempt, list(events))
    worker.finish(
        job_id,
        attempt,
        state=final_state,
        reason="" if final_state == job_pb2.SUCCEEDED else "scripted end",
        artifacts={"model": "/runs/x/model"} if final_state == job_pb2.SUCCEEDED else {},
        summary={"accuracy": 0.75} if final_state == job_pb2.SUCCEEDED else {},
    )


@needs_coordinator
@pytest.mark.parametrize(
    ("final", "exit_code"),
    [(job_pb2.SUCCEEDED, 0), (job_pb2.FAILED, 1), (job_pb2.CANCELLED, 3)],
    ids=["succeeded", "failed", "cancelled"],
)
def test_submit_follow_exit_code_says_how_the_job_ended(
    capsys, cluster, scripted_worker, job_yaml, final, exit_code
):
    events = [
        job_pb2.Event(report=job_pb2.Report(name="freeze_plan", text="PLAN TABLE")),
        job_pb2.Event(
            metrics=job_pb2.Metrics(phase="train", step=2, epoch=0.5, loss=0.25, total_steps=4)
        ),
        job_pb2.Event(
            metrics=job_pb2.Metrics(phase="eval", step=4, epoch=1.0, values={"accuracy": 0.75})
        ),
        job_pb2.Event(log=job_pb2.LogLine(level="info", message="saved best checkpoint")),
    ]
    driver = threading.Thread(target=_drive, args=(scripted_worker, final, events))
    driver.start()
    try:
        code, out, err = run_cli(
            capsys, "submit", job_yaml, "--follow", "--coordinator", cluster.address
        )
    finally:
        driver.join(10)
    assert code == exit_code, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith("submitted job ")
    assert "QUEUED submitted" in lines
    assert "PLAN TABLE" in lines and "[info] saved best checkpoint" in lines
    assert any(line.startswith("train step 2/4 epoch 0.50 loss 0.25") for line in lines)
    assert "eval  step 4 epoch 1.00 accuracy 0.75" in lines
    state = job_pb2.JobState.Name(final)
    assert any(line.startswith(f"{state} job ") for line in lines), lines  # the summary
    if final == job_pb2.SUCCEEDED:
        assert "  model  /runs/x/model" in lines, lines
    else:  # once: on the state change line, not again in the summary
        assert f"{state} scripted end" in lines and out.count("scripted end") == 1, lines


@needs_coordinator
def test_logs_follow_exits_with_the_job(capsys, cluster, scripted_worker, job_yaml):
    code, out, _ = run_cli(capsys, "submit", job_yaml, "--coordinator", cluster.address)
    job_id = submitted_id(out)
    driver = threading.Thread(target=_drive, args=(scripted_worker, job_pb2.SUCCEEDED))
    driver.start()
    try:
        code, out, _ = run_cli(capsys, "logs", job_id, "-f", "--coordinator", cluster.address)
    finally:
        driver.join(10)
    assert code == 0
    assert out.splitlines()[0] == "QUEUED submitted"
    assert any(line.startswith(f"SUCCEEDED job {job_id}") for line in out.splitlines())


@needs_coordinator
def test_a_followed_job_that_waits_in_the_queue_says_why(
    capsys, cluster, scripted_worker, job_yaml
):
    """A job no worker can take (2 GPUs; the only worker has none) printed "QUEUED
    submitted" and then nothing while the coordinator knew why it waited."""
    job_yaml.write_text(job_yaml.read_text() + "resources: {gpus: 2}\n")
    why = "waiting for a worker with 2 free GPUs; no live worker has that many (the most: 0)"

    def cancel_once_explained() -> None:  # whatever the reason: the follower must end
        with cluster.client() as sdk:
            deadline = time.monotonic() + 10
            while not (queued := sdk.list(states="queued")) or (
                queued[0].reason != why and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            time.sleep(3)  # longer than the follower's poll
            sdk.cancel(queued[0].id)

    canceller = threading.Thread(target=cancel_once_explained)
    canceller.start()
    try:
        code, out, err = run_cli(capsys, "submit", job_yaml, "-f", "--coordinator", cluster.address)
    finally:
        canceller.join(30)
    assert code == 3, (out, err)
    lines = out.splitlines()
    assert lines[1:3] == ["QUEUED submitted", f"QUEUED {why}"], lines
    assert out.count(why) == 1


@needs_coordinator
def test_submit_with_a_used_idempotency_key_and_an_edited_spec_is_refused(
    capsys, cluster, job_yaml
):
    flags = ["--coordinator", cluster.address, "--idempotency-key", "nightly"]
    code, out, _ = run_cli(capsys, "submit", job_yaml, "-q", *flags)
    job_id = out.strip()
    job_yaml.write_text(job_yaml.read_text().replace("epochs: 1", "epochs: 2"))
    code, out, err = run_cli(capsys, "submit", job_yaml, *flags)
    assert code == 1 and out == "", (out, err)
    assert err.startswith(f"error: this idempotency key already submitted {job_id}, from a "), err
    assert "(it differs in train)" in err


@needs_coordinator
def test_jobs_state_list_may_have_spaces_after_its_commas(capsys, cluster):
    code, out, _ = run_cli(
        capsys, "jobs", "--state", "queued, running", "--coordinator", cluster.address
    )
    assert (code, out.strip()) == (0, "no jobs in state queued, running")  # was "queued,  running"


@needs_coordinator
def test_workers(capsys, cluster, scripted_worker):
    code, out, _ = run_cli(capsys, "workers", "--coordinator", cluster.address)
    assert code == 0 and "w-test" in out and "LIVE" in out
    code, out, _ = run_cli(capsys, "workers", "--json", "--coordinator", cluster.address)
    assert json.loads(out)[0]["id"] == "w-test"


@needs_coordinator
def test_get_shows_the_compression_report(capsys, cluster, scripted_worker, job_yaml):
    """A job that compressed its model: `ftctl get` prints the before/after table."""
    spec = job_yaml.read_text() + "compression: {quantize: {method: dynamic_int8}}\n"
    job_yaml.write_text(spec)
    addr = cluster.address
    code, out, _ = run_cli(capsys, "submit", job_yaml, "-q", "--coordinator", addr)
    job_id = out.strip()
    acquired, attempt = scripted_worker.acquire()
    assert acquired == job_id
    report = job_pb2.Report(name="compression", columns=["model", "ms/batch", "accuracy"])
    report.rows.add(cells=["fp32", "55.1", "0.9900"])
    report.rows.add(cells=["int8", "33.4", "0.9850"])
    scripted_worker.report(job_id, attempt, [job_pb2.Event(report=report)])
    summary = {"fp32_latency_ms": 55.1, "fp32_accuracy": 0.99, "fp32_size_mb": 17.6}
    summary |= {"int8_latency_ms": 33.4, "int8_accuracy": 0.985, "int8_size_mb": 4.5}
    scripted_worker.finish(job_id, attempt, summary=summary | {"int8_speedup": 1.65})

    code, out, _ = run_cli(capsys, "get", job_id, "--coordinator", addr)
    assert code == 0 and "compression" in out  # the table, from the summary
    assert re.search(r"int8\s+4\.5\s+.*0\.9850\s+.*33\.40\s+1\.65x", out), out


def test_server_lease_flags_reach_workers_and_bad_pairs_are_refused(tmp_path):
    """`ftctl server --heartbeat-s/--lease-s` are what RegisterWorker hands out."""
    import grpc

    from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc

    bad = subprocess.run(
        [FTCTL, "server", "--db", tmp_path / "bad.db", "--heartbeat-s", "5", "--lease-s", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "--lease-s (3.0) must be longer" in bad.stderr
    no_followers = subprocess.run(
        [FTCTL, "server", "--db", tmp_path / "bad.db", "--max-followers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_followers.returncode != 0
    assert "--max-followers must be at least 1, got 0" in no_followers.stderr

    port = unused_port()
    server = subprocess.Popen(
        [
            FTCTL,
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            tmp_path / "c.db",
            "--heartbeat-s",
            "0.5",
            "--lease-s",
            "4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            reply = stub.RegisterWorker(
                coordinator_pb2.RegisterWorkerRequest(worker_id="w1", hostname="h"), timeout=10
            )
        assert (reply.heartbeat_interval_s, reply.lease_timeout_s) == (0.5, 4.0)
    finally:
        server.terminate()
        server.wait(timeout=30)
