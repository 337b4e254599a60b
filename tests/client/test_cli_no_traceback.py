"""No `ftctl` command shows a traceback for a user error (issue: "the first hour").

Every verb is found in the real argparse tree, so a verb added later is covered without
touching this file: its bad input is derived from its positional arguments (a job file
that is missing or is not YAML, a job id nobody knows) and, for a verb that talks to a
coordinator, a coordinator on a closed port. A verb whose arguments say nothing usable
gets its bad input from OVERRIDES, and the test fails until it has one.

Each command runs as a real subprocess of the installed console script: what a user sees
is the combined output and the exit code, not what main() returned.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from client_helpers import has_module, unused_port

from tunefleet.client.cli import build_parser
from tunefleet.client.cli.common import GLOBAL_FLAGS

FTCTL = Path(sys.executable).parent / "ftctl"

# Verbs whose positionals name no file or job: a bad input of their own.
OVERRIDES: dict[str, list[list[str]]] = {
    "jobs": [["jobs", "--state", "bogus"]],
    "workers": [["workers"]],  # only the closed port can be wrong
    "worker": [["worker", "--gpus", "-1"], ["worker", "drain", "w-nope"]],
    "server": [["server", "--db", "{tmp}/db", "--lease-s", "1"]],
    "up": [["up", "--listen", "0.0.0.0:0", "--db", "{tmp}/db"]],
    "token": [["token", " "]],
    "dashboard": [["dashboard", "--listen", "0.0.0.0:0"], ["dashboard", "--listen", "nonsense"]],
    "sweep": [
        ["sweep", "submit", "{tmp}/missing.yaml"],
        ["sweep", "submit", "{tmp}/bad.yaml"],
        ["sweep", "suggest", "{tmp}/missing.yaml"],
        ["sweep", "suggest", "{tmp}/bad.yaml"],
        ["--coordinator", "{closed}", "--connect-timeout", "1", "sweep", "get", "sweep-0bad"],
        ["--coordinator", "{closed}", "--connect-timeout", "1", "sweep", "list"],
        ["--coordinator", "{closed}", "--connect-timeout", "1", "sweep", "cancel", "sweep-0bad"],
    ],
}
BAD_YAML = "name: [unclosed\nmodel: {source: hf\n"


def verbs() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _talks_to_coordinator(parser: argparse.ArgumentParser) -> bool:
    return any(flag in parser._option_string_actions for flag in GLOBAL_FLAGS)


def bad_inputs() -> list[tuple[str, list[str]]]:
    cases = []
    for verb, parser in verbs().items():
        if verb in OVERRIDES:
            cases += [(verb, argv) for argv in OVERRIDES[verb]]
            continue
        positionals = [a for a in parser._actions if not a.option_strings and a.nargs != 0]
        metavars = [str(a.metavar or a.dest) for a in positionals]
        if any(m.endswith((".yaml", "FILE")) for m in metavars):
            cases.append((verb, [verb, "{tmp}/missing.yaml"]))
            cases.append((verb, [verb, "{tmp}/bad.yaml"]))
        elif any("JOB" in m for m in metavars):
            cases.append((verb, [verb, "d3be7e24"]))
        else:
            cases.append((verb, [verb, "<no bad input derived: add one to OVERRIDES>"]))
    return cases


CASES = bad_inputs()


def run_ftctl(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FTCTL), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_clean_env(), "HF_HUB_OFFLINE": "1"},
    )


def _clean_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    for name in ("TUNEFLEET_DEBUG", "TUNEFLEET_COORDINATOR", "TUNEFLEET_TOKEN"):
        env.pop(name, None)
    return env


def test_every_verb_has_a_bad_input():
    covered = {verb for verb, _ in CASES}
    assert covered == set(verbs())
    missing = [argv for _, argv in CASES if "OVERRIDES" in " ".join(argv)]
    assert not missing, f"derive or add a bad input for: {missing}"


@pytest.mark.parametrize(("verb", "argv"), CASES, ids=[" ".join(a) for _, a in CASES])
def test_every_verb_refuses_bad_input_in_words_not_a_traceback(tmp_path, verb, argv):
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    closed = f"127.0.0.1:{unused_port()}"
    argv = [a.format(tmp=tmp_path, closed=closed) for a in argv]
    if _talks_to_coordinator(verbs()[verb]):
        argv += ["--coordinator", closed, "--connect-timeout", "1"]
    proc = run_ftctl(argv)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    assert proc.stderr.strip(), "a failure must say why"


@pytest.mark.skipif(not has_module("transformers"), reason="needs the worker extra")
def test_plan_of_a_model_the_engine_cannot_load_is_one_line(tmp_path):
    """The issue's case: `ftctl plan` surfaced the engine's InvalidJobInput as a
    109-line traceback. A hub id that cannot be fetched offline fails the same way."""
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "job.yaml").write_text(
        "model: {source: hf, name: tunefleet-tests/no-such-model}\n"
        "data: {source: csv, train: train.csv}\n"
    )
    proc = run_ftctl(["plan", str(tmp_path / "job.yaml")])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: model.name: "), proc.stderr


def test_an_unexpected_error_is_one_line_that_says_how_to_see_the_traceback(
    capsys, monkeypatch, tmp_path
):
    from tunefleet.client.cli import jobs, main

    def broken(*args, **kwargs):
        raise RuntimeError("something inside ftctl broke\nsecond line")

    monkeypatch.delenv("TUNEFLEET_DEBUG", raising=False)
    monkeypatch.setattr(jobs, "prepare_spec", broken)
    (tmp_path / "job.yaml").write_text("name: x\n")
    assert main(["validate", str(tmp_path / "job.yaml")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first, hint = err.strip().splitlines()
    assert first == "error: internal error: RuntimeError: something inside ftctl broke"
    assert "--debug" in hint and "TUNEFLEET_DEBUG=1" in hint

    assert main(["--debug", "validate", str(tmp_path / "job.yaml")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "something inside" in err

    monkeypatch.setenv("TUNEFLEET_DEBUG", "1")
    assert main(["validate", str(tmp_path / "job.yaml")]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch, tmp_path):
    from tunefleet.client.cli import jobs, main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "prepare_spec", interrupted)
    assert main(["validate", str(tmp_path / "job.yaml")]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_file_errors_name_the_file(capsys, monkeypatch, tmp_path):
    from tunefleet.client.cli import jobs, main

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "job.yaml"))

    monkeypatch.setattr(jobs, "prepare_spec", denied)
    assert main(["validate", str(tmp_path / "job.yaml")]) == 1
    assert capsys.readouterr().err.strip() == f"error: Permission denied: {tmp_path}/job.yaml"
