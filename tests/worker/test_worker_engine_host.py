"""The warm engine host, for real: one host process (torch and transformers imported once)
forks training processes that must be indistinguishable from fresh ones to the worker:
same exit codes and logs, own session, engine.log as stdout/stderr, the attempt's cwd,
killable through their process group, gone when the host goes; and a child's crash or
the host's death costs the next attempt nothing but a new host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from worker_helpers import pid_alive

from tunefleet.worker.engine.launch import ENGINE_MODULE
from tunefleet.worker.engine_process import (
    EngineHost,
    HostUnavailable,
    WarmProcess,
    start_engine_process,
)

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform != "linux", reason="the engine host is Linux only"),
]


@pytest.fixture(scope="module")
def host():
    h = EngineHost(ready_timeout_s=240)
    yield h
    h.close()


def attempt_env(attempt: int = 1) -> dict[str, str]:
    """The environment JobRunner gives an attempt (less the worker's engine_env). Without
    PYTEST_CURRENT_TEST: it changes from test to test, which a worker's never does (and
    any difference starts a fresh process)."""
    return {
        **{k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
        "PYTHONUNBUFFERED": "1",
        "TUNEFLEET_JOB_ID": f"job-{attempt}",
        "TUNEFLEET_ATTEMPT": str(attempt),
    }


def engine_args(folder: Path, *, spec: Path | None = None, events: Path | None = None):
    return [
        "--spec",
        str(spec or folder / "spec.json"),
        "--out",
        str(folder / "out"),
        "--events",
        str(events or folder / "events.jsonl"),
    ]


def start(host, folder: Path, args: list[str], *, env=None, log_name="engine.log"):
    """(process, warm) as JobRunner starts it: the engine's command, a log, a cwd."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", ENGINE_MODULE, *args]
    with (folder / log_name).open("ab") as log:
        return start_engine_process(
            command, env=env or attempt_env(), cwd=folder, log_file=log, host=host
        )


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def blocked_child(host, folder: Path) -> tuple[WarmProcess, Path]:
    """A warm engine that blocks reading its spec from a FIFO until the test writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    fifo = folder / "spec.fifo"
    os.mkfifo(fifo)
    process, warm = start(host, folder, engine_args(folder, spec=fifo))
    assert warm and isinstance(process, WarmProcess)
    return process, fifo


def test_exit_codes_and_logs_match_a_fresh_process(host, tmp_path):
    (tmp_path / "not-a-folder").write_text("a file")
    cases = {
        "unreadable spec (InvalidJobInput)": (engine_args, "{not json", 2),
        "missing arguments (argparse)": (lambda folder: ["--out", str(folder)], None, 2),
        "uncaught exception (traceback)": (
            lambda folder: engine_args(folder, events=tmp_path / "not-a-folder" / "e.jsonl"),
            "{}",
            1,
        ),
    }
    for name, (make_args, spec_text, code) in cases.items():
        runs = {}
        for how in ("fresh", "warm"):
            folder = tmp_path / name.split()[0] / how
            folder.mkdir(parents=True)
            if spec_text is not None:
                (folder / "spec.json").write_text(spec_text)
            process, warm = start(host if how == "warm" else None, folder, make_args(folder))
            assert warm == (how == "warm")
            runs[how] = (process.wait(timeout=120), last_line(folder / "engine.log"))
        assert runs["warm"][0] == runs["fresh"][0] == code, (name, runs)
        fresh_line, warm_line = (line.replace(str(tmp_path), "") for _, line in runs.values())
        assert warm_line.replace("/warm", "/fresh") == fresh_line, (name, runs)


def test_a_warm_child_is_set_up_as_a_fresh_one_and_dies_by_its_group(host, tmp_path):
    process, fifo = blocked_child(host, tmp_path)
    stat = Path(f"/proc/{process.pid}/stat").read_text().rsplit(") ", 1)[1].split()
    parent, group, session = int(stat[1]), int(stat[2]), int(stat[3])
    assert (parent, group, session) == (host.pid, process.pid, process.pid)
    assert os.readlink(f"/proc/{process.pid}/cwd") == str(tmp_path)
    assert os.readlink(f"/proc/{process.pid}/fd/0") == os.devnull
    log = str(tmp_path / "engine.log")
    assert (
        os.readlink(f"/proc/{process.pid}/fd/1") == os.readlink(f"/proc/{process.pid}/fd/2") == log
    )
    # No descriptor of the host (its control socket) leaks into the training process.
    assert not any(
        os.readlink(f"/proc/{process.pid}/fd/{fd}").startswith("socket:")
        for fd in os.listdir(f"/proc/{process.pid}/fd")
    )
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)

    os.killpg(process.pid, signal.SIGTERM)  # as JobRunner cancels: the whole group
    assert process.wait(timeout=30) == -signal.SIGTERM  # default disposition, as fresh
    assert not pid_alive(process.pid)


def test_a_crashed_child_leaves_the_host_serving(host, tmp_path):
    process, _ = blocked_child(host, tmp_path / "crash")
    host_pid = host.pid
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL

    folder = tmp_path / "next"
    folder.mkdir()
    (folder / "spec.json").write_text("{not json")
    process, warm = start(host, folder, engine_args(folder), env=attempt_env(2))
    assert warm and process.wait(timeout=60) == 2
    assert host.pid == host_pid
    assert "invalid job input" in last_line(folder / "engine.log")


def test_children_die_with_the_host_and_the_next_attempt_starts_a_new_one(host, tmp_path):
    process, _ = blocked_child(host, tmp_path / "orphan")
    old_host = host.pid
    os.kill(old_host, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    wait_until(lambda: not pid_alive(process.pid), 10, "the host's child to die with it")

    folder = tmp_path / "after"
    folder.mkdir()
    (folder / "spec.json").write_text("{not json")
    process, warm = start(host, folder, engine_args(folder), env=attempt_env(3))
    assert warm and process.wait(timeout=120) == 2
    assert host.pid not in (None, old_host)


def test_what_a_warm_process_cannot_be_starts_fresh(host, tmp_path):
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / "spec.json").write_text("{not json")
    # An import-time variable the host was not started with: a fresh process reads it.
    env = {**attempt_env(), "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "0"}
    with (
        (folder / "engine.log").open("ab") as log,
        pytest.raises(HostUnavailable, match="HF_HUB_OFFLINE, TOKENIZERS_PARALLELISM"),
    ):
        host.spawn(engine_args(folder), env=env, cwd=str(folder), log_file=log)
    process, warm = start(host, folder, engine_args(folder), env=env)
    assert not warm and isinstance(process, subprocess.Popen)
    assert process.wait(timeout=120) == 2

    # Not the single-process engine (accelerate launch, a test's own program): fresh.
    with (folder / "other.log").open("ab") as log:
        process, warm = start_engine_process(
            [sys.executable, "-c", "print('hello')"],
            env=attempt_env(),
            cwd=folder,
            log_file=log,
            host=host,
        )
    assert not warm and process.wait(timeout=30) == 0


def test_the_worker_side_imports_neither_torch_nor_grpc_into_the_engine():
    """The daemon stays importable without torch, and the engine (so the host) without the
    daemon's gRPC: forking a process that has gRPC loaded is what the host must not do."""
    check = (
        "import sys; import tunefleet.worker.engine_process, tunefleet.worker.daemon; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "import subprocess; "
        "code = 'import sys, tunefleet.worker.engine.trainer; assert \"grpc\" not in sys.modules'; "
        "subprocess.run([sys.executable, '-c', code], check=True)"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
