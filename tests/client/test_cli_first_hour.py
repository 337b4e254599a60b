"""A newcomer's first hour with ftctl and the SDK (issue "The first hour"): an unreachable
coordinator is explained within seconds, short job ids work, `ftctl jobs` keeps one line
per job, `validate --resolved` shows what would run, and each verb's --help lists only the
flags it uses."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from client_helpers import needs_coordinator, unused_port

from tunefleet.client import (
    Client,
    JobFailed,
    JobState,
    TunefleetError,
    Unavailable,
    ValidationError,
)
from tunefleet.client.cli import build_parser, main
from tunefleet.client.cli import common as cli_common
from tunefleet.client.cli.jobs import jobs_lines
from tunefleet.client.client import normalize_job_id
from tunefleet.client.types import Job
from tunefleet.spec import load_job_file, spec_to_dict
from tunefleet.v1 import job_pb2
from tunefleet.worker.__main__ import main as worker_main

FTCTL = Path(sys.executable).parent / "ftctl"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    return {**env, "HF_HUB_OFFLINE": "1"}


# --- an unreachable coordinator -------------------------------------------------------


def test_unreachable_coordinator_says_so_at_once_and_gives_up_within_seconds(job_yaml):
    """The issue: `get` and `submit --follow` waited 9 s in silence, `logs JOB` 59 s. A
    real closed port; the default --connect-timeout; all verbs at once to save time."""
    closed = f"127.0.0.1:{unused_port()}"
    commands = {
        "get": ["get", "job-d3be7e24"],
        "jobs": ["jobs"],
        "logs": ["logs", "d3be7e24"],
        "logs -f": ["logs", "d3be7e24", "-f"],
        "submit -f": ["submit", str(job_yaml), "--follow"],
        "cancel": ["cancel", "d3be7e24"],
    }
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [str(FTCTL), *argv, "--coordinator", closed],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for name, argv in commands.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < 15, (name, elapsed)
        assert proc.returncode == 1, (name, out, err)
        assert "Traceback" not in out + err
        lines = err.strip().splitlines()
        assert lines[0].startswith(f"waiting for coordinator at {closed}..."), (name, err)
        assert lines[-1].startswith(f"error: cannot reach coordinator at {closed}"), (name, err)
        assert "`ftctl up`" in lines[-1] and "--coordinator" in lines[-1]
        assert "$TUNEFLEET_COORDINATOR" in lines[-1]


def test_a_follower_keeps_retrying_and_says_so(capsys, monkeypatch):
    """Followers may wait longer for a coordinator they lose, but must say they are."""
    monkeypatch.setattr(cli_common, "FOLLOW_RETRY_S", 1.0)
    closed = f"127.0.0.1:{unused_port()}"
    args = build_parser().parse_args(
        ["logs", "job-1", "-f", "--coordinator", closed, "--connect-timeout", "0.2"]
    )
    started = time.monotonic()
    with cli_common.client(args, follow=True) as sdk, pytest.raises(Unavailable):
        list(sdk.events("job-d3be7e24"))
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert f"waiting for coordinator at {closed}... (retrying for up to 1 s" in err
    assert "Ctrl-C stops following, the job keeps running" in err


def test_a_coordinator_that_accepts_but_never_answers_is_given_up_on_in_time(capsys):
    """A port that completes TCP but never speaks gRPC (a stopped or hung coordinator,
    another service): gRPC's own 20 s connect timeout held `ftctl jobs` past
    --connect-timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code = main(["jobs", "--coordinator", address, "--connect-timeout", "1"])
        elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 8, (elapsed, err)
    assert f"error: cannot reach coordinator at {address}" in err


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_a_connect_timeout_that_is_no_number_of_seconds_is_a_bad_command_line(capsys, value):
    """NaN compared false with every deadline: `--connect-timeout nan` retried forever."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["jobs", "--connect-timeout", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --connect-timeout: expected seconds, 0 or more, got {value}" in err


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("http://127.0.0.1:50051", "a gRPC address, not a URL; drop 'http://'"),
        ("127.0.0.1", "no port"),
        ("127.0.0.1:port", "the port must be a number from 1 to 65535"),
    ],
)
def test_a_coordinator_address_that_is_not_host_port_is_refused_at_once(
    capsys, monkeypatch, address, why
):
    """`--coordinator http://127.0.0.1:50051` (the dashboard's URL, pasted) or an address
    without a port waited out --connect-timeout, then said "cannot reach coordinator",
    hiding the typo; the SDK and the worker retried it in the same silence."""
    expected = f"expected HOST:PORT (e.g. 127.0.0.1:50051), got {address!r}: {why}"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["jobs", "--coordinator", address])
    assert info.value.code == 2
    assert f"argument --coordinator: {expected}" in capsys.readouterr().err

    monkeypatch.setenv("TUNEFLEET_COORDINATOR", address)
    started = time.monotonic()
    assert main(["jobs"]) == 1
    assert time.monotonic() - started < 1
    assert capsys.readouterr().err.strip() == f"error: $TUNEFLEET_COORDINATOR: {expected}"
    with pytest.raises(ValidationError, match=re.escape(f"$TUNEFLEET_COORDINATOR: {expected}")):
        Client()
    with pytest.raises(ValidationError, match=re.escape(f"target: {expected}")):
        Client(address)

    with pytest.raises(SystemExit) as info:
        worker_main(["--coordinator", address])
    assert info.value.code == 2
    assert f"--coordinator: {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["localhost:50051", "[::1]:50051", "dns:///127.0.0.1:1"])
def test_host_port_and_grpc_uris_are_accepted_as_coordinator_addresses(address):
    assert build_parser().parse_args(["jobs", "--coordinator", address]).coordinator == address
    Client(address).close()


def test_the_connect_timeout_default_is_a_few_seconds():
    args = build_parser().parse_args(["jobs"])
    assert 3 <= args.connect_timeout <= 5


# --- short job ids --------------------------------------------------------------------


def test_bare_hex_digits_get_the_job_prefix():
    assert normalize_job_id("d3be7e24") == "job-d3be7e24"
    assert normalize_job_id(" job-d3be7e24 ") == "job-d3be7e24"
    # Every id is lower case; one typed or copied in capitals is the same id.
    assert normalize_job_id("JOB-D3BE7E24") == normalize_job_id("D3BE7E24") == "job-d3be7e24"
    assert normalize_job_id("Job-D3be") == "job-d3be"
    assert normalize_job_id("nope") == "nope"  # not an id's digits: left alone


@needs_coordinator
def test_short_job_ids_work_in_the_sdk_and_every_job_verb(capsys, cluster, job_yaml):
    with cluster.client() as sdk:
        job_id = sdk.submit(job_yaml).id
        digits = job_id.removeprefix("job-")
        assert sdk.get(digits).id == job_id
        assert sdk.resolve_job_id(digits[:4]) == job_id  # a unique prefix
        assert sdk.resolve_job_id(digits[:4].upper()) == sdk.get(job_id.upper()).id == job_id
        assert [e.seq for e in sdk.events(digits[:5], follow=False)]
        assert sdk.job(digits).id == job_id
        # A handle made from a prefix learns its job's full id on its first call.
        handle = sdk.job(digits[:4])
        assert handle.get().id == handle.id == job_id
        assert repr(handle) == f"JobHandle({job_id!r})"

    address = ["--coordinator", cluster.address]
    assert main(["get", digits, *address]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["logs", digits, *address]) == 0
    assert "QUEUED" in capsys.readouterr().out
    assert main(["cancel", digits[:6], *address]) == 0
    assert f"job {job_id}:" in capsys.readouterr().out


@needs_coordinator
def test_an_unknown_or_ambiguous_id_suggests_known_ones(capsys, cluster, job_yaml, monkeypatch):
    with cluster.client() as sdk:
        job_id = sdk.submit(job_yaml).id
    typo = job_id[:-1] + ("0" if job_id[-1] != "0" else "1")  # one digit off
    assert main(["get", typo, "--coordinator", cluster.address]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: job {typo} not found; did you mean {job_id}?"

    # Two jobs whose ids share a prefix (ids are random: the listing is stubbed).
    from tunefleet.client.client import Client

    real_list = Client.list

    def with_twins(self, states=None, limit=100):
        return [*real_list(self, states, limit), _twin("job-abcd1111"), _twin("job-abcd2222")]

    monkeypatch.setattr(Client, "list", with_twins)
    assert main(["logs", "abcd", "--coordinator", cluster.address]) == 1
    err = capsys.readouterr().err
    assert "error: job id 'abcd' is ambiguous: did you mean job-abcd1111, job-abcd2222?" in err


def _twin(job_id: str) -> Job:
    return Job.from_proto(job_pb2.Job(id=job_id, state=job_pb2.QUEUED))


# --- ftctl jobs: one line per job -----------------------------------------------------


def _job(job_id, state, *, reason="", minutes=None, summary=None) -> Job:
    msg = job_pb2.Job(id=job_id, state=state, reason=reason, summary=summary or {})
    msg.spec.name = f"name-of-{job_id}"
    now = datetime.now(timezone.utc)
    msg.created_at.FromDatetime(now - timedelta(hours=1))
    if minutes is not None:
        msg.started_at.FromDatetime(now - timedelta(minutes=minutes + 1))
        msg.finished_at.FromDatetime(now - timedelta(minutes=1))
    return Job.from_proto(msg)


LONG_REASON = (
    "invalid job input: data.train: row 17, column label: 'sprots' is not one of the "
    "labels business, science, sports, world\nTraceback-free second line " * 5
)


def _jobs() -> list[Job]:
    return [
        _job("job-0000aaaa", job_pb2.FAILED, reason=LONG_REASON, minutes=3),
        _job("job-0000bbbb", job_pb2.SUCCEEDED, minutes=12, summary={"eval_accuracy": 0.9925}),
        _job("job-0000cccc", job_pb2.QUEUED),
        _job("job-0000dddd", job_pb2.SUCCEEDED, minutes=1, summary={"eval_loss": 0.25}),
    ]


@pytest.mark.parametrize("width", [80, 120, 200])
def test_jobs_lines_are_one_per_job_and_fit_the_terminal(width):
    lines = [line.plain for line in jobs_lines(_jobs(), width)]
    assert len(lines) == 1 + 4
    assert all(len(line) <= width for line in lines), [len(x) for x in lines]
    header = lines[0].split()
    created = ["CREATED"] if width > 80 else []  # dropped to leave the reason some room
    assert header == ["ID", "NAME", "STATE", "DURATION", "BEST", *created, "REASON"]
    failed, succeeded, queued, by_loss = lines[1:]
    assert failed.startswith("job-0000aaaa") and failed.endswith("…")
    assert "invalid job input" in failed and "\n" not in failed
    assert "3m00s" in failed and "12m00s" in succeeded
    assert "acc 0.9925" in succeeded and "loss 0.2500" in by_loss
    assert re.search(r"QUEUED\s+-\s+-(\s|$)", queued)


@needs_coordinator
def test_ftctl_jobs_prints_one_line_per_job(capsys, cluster, scripted_worker, job_yaml):
    with cluster.client() as sdk:
        first, second = sdk.submit(job_yaml), sdk.submit(job_yaml)
        job_id, attempt = scripted_worker.acquire()
        scripted_worker.finish(job_id, attempt, state=job_pb2.FAILED, reason=LONG_REASON)
        assert sdk.get(job_id).state is JobState.FAILED
    assert main(["jobs", "--coordinator", cluster.address]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert len(lines) == 3, lines
    assert all(len(line) <= 200 for line in lines)  # a pipe: 200 columns
    (failed,) = [line for line in lines if line.startswith(job_id)]
    assert "FAILED" in failed and failed.endswith("…")
    assert {first.id, second.id} == {line.split()[0] for line in lines[1:]}


# --- ftctl validate --resolved ----------------------------------------------------------


def test_validate_resolved_prints_the_spec_with_every_default(capsys, job_yaml, tmp_path):
    assert main(["validate", "--resolved", str(job_yaml)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"# {job_yaml}, resolved\n")
    resolved = yaml.safe_load(out)
    assert resolved == spec_to_dict(load_job_file(job_yaml))
    # Defaults the file did not give, filled in.
    assert resolved["train"]["batch_size"] == 8 and resolved["train"]["epochs"] == 1  # hf model
    assert resolved["optimizer"] == {
        "name": "adamw",
        "lr": 5e-05,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-08,
    }
    assert resolved["eval"]["metric"] == "accuracy" and resolved["resources"]["nodes"] == 1
    # What it prints is a job file that validates to the same spec.
    again = tmp_path / "resolved.yaml"
    again.write_text(out)
    assert load_job_file(again) == load_job_file(job_yaml)


def test_validate_resolved_of_several_files_prints_one_document_each(capsys, job_yaml, bad_yaml):
    assert main(["validate", "--resolved", str(job_yaml), str(job_yaml), str(bad_yaml)]) == 1
    out, err = capsys.readouterr()
    assert len(list(yaml.safe_load_all(out))) == 2
    assert f"invalid: {bad_yaml}" in err


# --- each verb's --help lists only the flags it uses ----------------------------------


def _help(verb: str) -> str:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[verb].format_help()


@pytest.mark.parametrize("verb", ["validate", "run", "plan", "token", "server"])
def test_verbs_that_talk_to_no_coordinator_show_no_connection_flags(verb):
    text = _help(verb)
    for flag in ("--coordinator", "--connect-timeout", "--token-file", "--tls-ca"):
        assert flag not in text, (verb, flag)


def test_validate_help_does_not_mention_tls():
    proc = subprocess.run(
        [str(FTCTL), "validate", "--help"], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0 and "--resolved" in proc.stdout
    assert "--tls" not in proc.stdout and "--coordinator" not in proc.stdout


@pytest.mark.parametrize("verb", ["submit", "jobs", "get", "logs", "cancel", "workers", "worker"])
def test_verbs_that_talk_to_a_coordinator_show_its_flags(verb):
    text = _help(verb)
    assert "--coordinator" in text and "--tls-ca" in text and "--token-file" in text


def test_up_takes_only_the_ca_its_worker_trusts():
    text = _help("up")
    assert "--tls-ca" in text and "--coordinator" not in text and "--token-file" not in text


def test_connection_flags_before_any_verb_are_still_accepted(capsys, job_yaml):
    assert main(["--coordinator", "127.0.0.1:1", "validate", str(job_yaml)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


# --- the SDK's wait(raise_on_failure=True) --------------------------------------------


def test_job_failed_is_in_the_one_tree_and_carries_the_job_and_reason():
    job = _job("job-0000aaaa", job_pb2.FAILED, reason="diverged at step 3 (loss nan)")
    error = JobFailed(job)
    assert isinstance(error, TunefleetError)
    assert error.job is job
    assert str(error) == "job job-0000aaaa FAILED: diverged at step 3 (loss nan)"


def test_readme_quick_start_does_not_index_the_summary_of_a_failed_job():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("From Python:")
    snippet = readme[start : readme.index("```\n", readme.index("```python", start) + 9)]
    assert "wait(raise_on_failure=True)" in snippet
    assert "except JobFailed" in snippet
