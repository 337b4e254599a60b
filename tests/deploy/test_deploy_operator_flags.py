"""What an operator gets for a wrong value in a unit file, a manifest or an env file: both
daemons, started as the deployment files start them (`python -m tunefleet.coordinator` /
`python -m tunefleet.worker`, and `ftctl server` / `ftctl worker`), exit at once with one
line that names the flag and what is accepted; never a traceback, never a daemon that
starts somewhere other than where it was told.

Each runs as a real process with a timeout: a daemon that starts anyway is a failure
here, not a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tunefleet.worker.__main__ import build_parser as build_worker_parser
from tunefleet.worker.command_line import check_worker_arguments

FTCTL = [sys.executable, "-m", "tunefleet.client.cli"]
COORDINATOR = [sys.executable, "-m", "tunefleet.coordinator"]
WORKER = [sys.executable, "-m", "tunefleet.worker"]
# A daemon that has not exited by then has started: that is the failure being tested.
START_TIMEOUT_S = 60


def run(argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            env={**clean, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{argv[1:]} started instead of refusing: {exc.stderr}") from None


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    err = result.stderr
    assert result.returncode != 0, (result.stdout, err)
    assert "Traceback" not in err + result.stdout, err
    # argparse's usage lines may precede it; the error itself is one line.
    last = err.strip().splitlines()[-1]
    assert "error: " in last, err
    for needle in needles:
        assert needle in last, err


@pytest.mark.parametrize("command", [COORDINATOR, [*FTCTL, "server"]], ids=["python -m", "ftctl"])
def test_coordinator_refuses_a_port_out_of_range_instead_of_serving_elsewhere(tmp_path, command):
    """gRPC took 127.0.0.1:99999 as port 34463 (99999 mod 65536) and served there."""
    result = run([*command, "--listen", "127.0.0.1:99999", "--db", str(tmp_path / "c.db")])
    assert_one_line_error(result, "99999", "0-65535")


@pytest.mark.parametrize("port", ["99999", "-5"])
def test_coordinator_refuses_a_metrics_port_out_of_range(tmp_path, port):
    """99999 was an OverflowError traceback (ftctl: "internal error ... a bug in ftctl")."""
    for command in (COORDINATOR, [*FTCTL, "server"]):
        result = run(
            [
                *command,
                "--listen",
                "127.0.0.1:0",
                "--metrics-port",
                port,
                "--db",
                str(tmp_path / "c.db"),
            ]
        )
        assert_one_line_error(result, "--metrics-port", "0-65535", port)


def test_coordinator_names_a_database_it_cannot_use(tmp_path):
    """A file that is not SQLite, and a folder SQLite cannot write in: "internal error:
    DatabaseError ... a bug in ftctl" / "OperationalError: unable to open database file"
    (python -m: a traceback), naming no file."""
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("these are my notes, not a database\n" * 10)
    for command in (COORDINATOR, [*FTCTL, "server"]):
        result = run([*command, "--listen", "127.0.0.1:0", "--db", str(not_a_db)])
        assert_one_line_error(result, str(not_a_db), "not an SQLite database")
    assert not_a_db.read_text().startswith("these are my notes")
    # /proc: its folders exist but nothing can be created in them, whoever runs this.
    for command in (COORDINATOR, [*FTCTL, "server"]):
        result = run([*command, "--listen", "127.0.0.1:0", "--db", "/proc/coordinator.db"])
        assert_one_line_error(result, "/proc/coordinator.db")
        result = run([*command, "--listen", "127.0.0.1:0", "--db", "/proc/nope/c.db"])
        assert_one_line_error(result, "--db /proc/nope/c.db", "cannot create /proc/nope")


@pytest.mark.parametrize("command", [WORKER, [*FTCTL, "worker"]], ids=["python -m", "ftctl"])
def test_worker_refuses_bad_flag_values_in_one_line(tmp_path, command):
    base = [*command, "--coordinator", "127.0.0.1:1", "--artifacts", str(tmp_path / "a")]
    # An unknown level was "internal error: ValueError: Unknown level: 'LOUD'".
    result = run([*base, "--log-level", "LOUD"])
    assert_one_line_error(result, "--log-level", "'LOUD'", "DEBUG, INFO, WARNING")
    # Dialled 34463 (99999 mod 65536) and retried forever, its log naming another port.
    result = run([*command, "--coordinator", "127.0.0.1:99999", "--artifacts", str(tmp_path)])
    assert_one_line_error(result, "--coordinator", "127.0.0.1:99999", "from 1 to 65535")
    # The coordinator refused the id at every registration, and the worker retried for ever.
    long_id = "gpu-node-0001.cluster.example.org-" + "x" * 40
    for bad_id in ("bad id!", long_id):
        result = run([*base, "--id", bad_id])
        assert_one_line_error(result, "--id", "at most 64 characters")
    # An --artifacts folder it cannot create: the worker registered and failed every job.
    result = run([*command, "--coordinator", "127.0.0.1:1", "--artifacts", "/proc/nope/art"])
    assert_one_line_error(result, "--artifacts", "/proc/nope/art")


def test_a_malformed_cache_size_variable_breaks_only_the_worker(monkeypatch):
    """$TUNEFLEET_INPUT_CACHE_MAX_GB was parsed while building ftctl's parser: every ftctl
    command, `ftctl validate` included, died with a ValueError traceback."""
    env = {"TUNEFLEET_INPUT_CACHE_MAX_GB": "50GB"}
    result = run([*FTCTL, "token", "ci", "--role", "user"], env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert run([*WORKER, "--help"], env=env).returncode == 0
    for command in (WORKER, [*FTCTL, "worker"]):
        result = run([*command, "--coordinator", "127.0.0.1:1"], env=env)
        assert_one_line_error(result, "$TUNEFLEET_INPUT_CACHE_MAX_GB", "'50GB'")
    # A number still sets the bound, and the flag still wins over it.
    monkeypatch.setenv("TUNEFLEET_INPUT_CACHE_MAX_GB", "7.5")
    args = build_worker_parser().parse_args(["--coordinator", "127.0.0.1:1"])
    check_worker_arguments(args)
    assert args.input_cache_max_gb == 7.5
    args = build_worker_parser().parse_args(
        ["--coordinator", "127.0.0.1:1", "--input-cache-max-gb", "3"]
    )
    check_worker_arguments(args)
    assert args.input_cache_max_gb == 3.0


def test_dashboard_refuses_a_port_out_of_range():
    """It printed "dashboard on http://127.0.0.1:99999/", then "internal error:
    OverflowError ... a bug in ftctl"."""
    pytest.importorskip("uvicorn")
    result = run([*FTCTL, "dashboard", "--listen", "127.0.0.1:99999"])
    assert_one_line_error(result, "99999", "0-65535")
    assert "dashboard on" not in result.stdout


def _first_log_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The first line a worker logs, then SIGTERM."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    proc = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, "GRPC_VERBOSITY": "NONE", **(env or {})},
    )
    try:
        return proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=START_TIMEOUT_S)


def test_worker_says_at_start_that_an_allowed_root_does_not_exist(tmp_path):
    """`--allowed-root /shraed`: every job was refused ("path outside the folders this
    worker allows") and nothing named the flag's typo."""
    typo = tmp_path / "shraed"
    first = _first_log_line(
        [*WORKER, "--coordinator", "127.0.0.1:1", "--artifacts", str(tmp_path / "a"),
         "--gpus", "0", "--allowed-root", str(typo)]
    )  # fmt: skip
    assert f"--allowed-root {typo}: no such folder" in first, first


def test_worker_offering_gpus_the_host_lacks_says_so_at_start(tmp_path):
    """`--gpus 2` on a host where torch sees none (a CPU node, a wrong
    CUDA_VISIBLE_DEVICES): the worker registered 2 GPUs without a word, and GPU jobs placed
    on it trained on the CPU."""
    pytest.importorskip("torch")
    first = _first_log_line(
        [*WORKER, "--gpus", "2", "--coordinator", "127.0.0.1:1", "--artifacts", str(tmp_path)],
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert "--gpus 2, but torch sees 0 GPUs" in first, first
