"""Sweeps through the SDK and ftctl, on a real coordinator over real gRPC; the scripted
worker plays each trial (reports validation metrics, finishes with a summary)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from client_helpers import needs_coordinator

from tunefleet.client import (
    Client,
    DeadlineExceeded,
    NotFound,
    Sweep,
    SweepState,
    ValidationError,
)
from tunefleet.client.cli import main
from tunefleet.v1 import job_pb2, spec_pb2, sweep_pb2

pytestmark = needs_coordinator
FTCTL = Path(sys.executable).parent / "ftctl"


@pytest.fixture
def sweep_yaml(tmp_path: Path, job_dict: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    sweep = {
        "space": {
            "finetune.strategy": ["head_only", "last_k"],
            "finetune.k": {"values": [1, 2], "when": {"finetune.strategy": "last_k"}},
        },
        "max_concurrent": 1,
    }
    path.write_text(yaml.safe_dump({**job_dict, "sweep": sweep}))
    return path


def play(worker, accuracy: float) -> str:
    job_id, attempt = worker.acquire()
    worker.report(
        job_id,
        attempt,
        [
            job_pb2.Event(
                metrics=job_pb2.Metrics(phase="eval", step=1, values={"accuracy": accuracy})
            )
        ],
    )
    worker.finish(
        job_id,
        attempt,
        artifacts={"model": f"/runs/{job_id}/model"},
        summary={"eval_accuracy": accuracy, "test_accuracy": accuracy - 0.05},
    )
    return job_id


def test_sdk_submits_follows_and_picks_the_best(cluster, scripted_worker, sweep_yaml):
    with Client(cluster.address) as client:
        handle = client.submit_sweep(sweep_yaml)
        assert handle.sweep.state is SweepState.RUNNING and handle.sweep.grid_size == 3
        assert len(handle.trials()) == 1  # max_concurrent 1
        jobs = [play(scripted_worker, a) for a in (0.6, 0.8, 0.7)]
        final = handle.wait(timeout=10, poll_s=0.05)
        assert final.state is SweepState.SUCCEEDED
        best = handle.best()
        assert best.job_id == jobs[1] and best.value == 0.8
        assert final.best_artifacts["model"] == f"/runs/{jobs[1]}/model"
        assert [s.id for s in client.list_sweeps()] == [handle.id]
        assert client.get(best.job_id).spec.labels["sweep"] == handle.id


def test_wait_on_a_cancelled_sweep_returns_once_its_running_trial_stopped(
    cluster, scripted_worker, sweep_yaml
):
    with Client(cluster.address) as client:
        handle = client.submit_sweep(sweep_yaml)
        job_id, attempt = scripted_worker.acquire()
        assert handle.cancel().state is SweepState.CANCELLED
        with pytest.raises(DeadlineExceeded):  # its trial's job has not stopped yet
            handle.wait(timeout=0.3, poll_s=0.05)
        scripted_worker.finish(job_id, attempt, job_pb2.CANCELLED)
        final = handle.wait(timeout=10, poll_s=0.05)
        assert all(t.job_state.is_terminal() for t in final.trials)


def test_list_limits_beyond_int32_mean_all_and_a_non_integer_is_a_validation_error(cluster):
    with Client(cluster.address) as client:
        assert client.list(limit=10**12) == [] and client.list_sweeps(limit=10**12) == []
        for call in (client.list, client.list_sweeps):
            with pytest.raises(ValidationError, match="limit: expected an integer, got '5'"):
                call(limit="5")


def test_a_trials_params_come_in_the_spaces_order_not_the_wires():
    """A condition's field after the field it names (strategy, then k), whatever order
    the wire's map gives them in."""
    msg = sweep_pb2.Sweep(id="sweep-1234abcd", state=sweep_pb2.SWEEP_RUNNING)
    space = msg.spec.sweep.space
    space["finetune.strategy"].CopyFrom(
        spec_pb2.SweepParam(type="choice", values=["head_only", "last_k"])
    )
    space["finetune.k"].CopyFrom(
        spec_pb2.SweepParam(type="choice", values=["1", "2"], when={"finetune.strategy": "last_k"})
    )
    space["optimizer.lr"].CopyFrom(spec_pb2.SweepParam(type="loguniform", low=1e-5, high=1e-3))
    trial = msg.trials.add(number=0)
    for path, value in (
        ("optimizer.lr", "0.001"),
        ("finetune.k", "1"),
        ("finetune.strategy", "last_k"),
    ):
        trial.params[path] = value
    got = Sweep.from_proto(msg).trials[0].params
    assert list(got) == ["finetune.strategy", "finetune.k", "optimizer.lr"]


def test_sdk_refuses_a_bad_space_locally_with_paths(cluster, tmp_path, job_dict):
    path = tmp_path / "bad.yaml"
    sweep = {"space": {"optimizer.lr": "loguniform(0, 1)", "finetune.k": "int(1, 2.5)"}}
    path.write_text(yaml.safe_dump({**job_dict, "sweep": sweep}))
    with Client(cluster.address) as client, pytest.raises(ValidationError) as e:
        client.submit_sweep(path)
    assert [x.path for x in e.value.errors] == [
        "sweep.space.finetune.k",
        "sweep.space.optimizer.lr",
    ]


def test_cli_sweep_submit_get_list_and_compare(capsys, cluster, scripted_worker, sweep_yaml):
    flags = ["--coordinator", cluster.address]
    assert main(["sweep", "submit", str(sweep_yaml), *flags]) == 0
    out = capsys.readouterr().out
    sweep_id = out.split()[2]
    assert sweep_id.startswith("sweep-") and "grid, 3 trials, 1 at once, max accuracy" in out
    for accuracy in (0.6, 0.9, 0.7):
        play(scripted_worker, accuracy)
    assert main(["sweep", "get", sweep_id, "--json", *flags]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["state"] == "SUCCEEDED" and got["best_value"] == 0.9
    best_job = got["best_job_id"]
    assert main(["get", sweep_id, *flags]) == 0
    out = capsys.readouterr().out
    assert f"/runs/{best_job}/model" in out and "best" in out
    assert main(["sweep", "list", *flags]) == 0
    assert sweep_id in capsys.readouterr().out

    assert main(["compare", sweep_id, "--json", *flags]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["metric"] == "accuracy"
    rows = table["rows"]
    assert [r["validation"] for r in rows] == [0.9, 0.7, 0.6]
    assert rows[0]["best"] and rows[0]["job_id"] == best_job
    assert rows[0]["test"] == pytest.approx(0.85)
    # head_only's default lr differs too: the resolved specs are compared.
    assert set(rows[0]["params"]) == {"finetune.strategy", "finetune.k", "optimizer.lr"}
    assert main(["compare", sweep_id, "--csv", *flags]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert parsed[0]["job_id"] == best_job and parsed[0]["best"] == "True"


def test_cli_sweep_submit_follow_ends_with_the_sweep(capsys, cluster, sweep_yaml, tmp_path):
    # Every trial's job is cancelled under it: the follow sees the sweep end CANCELLED.
    import threading

    flags = ["--coordinator", cluster.address]

    def cancel_soon():
        with Client(cluster.address) as client:
            for _ in range(200):
                sweeps = client.list_sweeps()
                if sweeps:
                    client.cancel_sweep(sweeps[0].id, "test")
                    return
                threading.Event().wait(0.05)

    t = threading.Thread(target=cancel_soon)
    t.start()
    code = main(["sweep", "submit", str(sweep_yaml), "--follow", *flags])
    t.join()
    out = capsys.readouterr().out
    assert code == 3 and "CANCELLED" in out


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as JSON parsers other than Python's do."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_compare_ranks_a_diverged_trial_last_and_prints_strict_json(
    capsys, cluster, scripted_worker, tmp_path, job_dict
):
    # A trial whose validation loss is NaN or infinite is no best: the sweep fails it, and
    # compare used to sort it first, mark it best and print NaN/Infinity in --json.
    path = tmp_path / "loss.yaml"
    sweep = {"space": {"optimizer.lr": [1e-3, 1e-4, 1e-5]}, "metric": "loss"}
    path.write_text(yaml.safe_dump({**job_dict, "sweep": {**sweep, "max_concurrent": 3}}))
    flags = ["--coordinator", cluster.address]
    with Client(cluster.address) as client:
        handle = client.submit_sweep(path)
        for loss in (float("nan"), 0.5, float("inf")):
            job_id, attempt = scripted_worker.acquire()
            scripted_worker.finish(job_id, attempt, summary={"eval_loss": loss})
        final = handle.wait(timeout=10, poll_s=0.05)
    assert final.best_value == 0.5
    assert main(["compare", handle.id, "--json", *flags]) == 0
    rows = _strict_json(capsys.readouterr().out)["rows"]
    assert rows[0]["job_id"] == final.best_job_id and rows[0]["best"]
    assert [r["validation"] for r in rows] == [0.5, None, None]
    assert main(["compare", handle.id, *flags]) == 0
    table = capsys.readouterr().out
    assert table.index(final.best_job_id) < table.index("nan")
    assert main(["jobs", "--json", *flags]) == 0
    _strict_json(capsys.readouterr().out)
    assert main(["get", rows[-1]["job_id"], "--json", *flags]) == 0
    _strict_json(capsys.readouterr().out)


def test_compare_lists_each_job_once_and_refuses_an_unknown_metric(
    capsys, cluster, scripted_worker, sweep_yaml
):
    flags = ["--coordinator", cluster.address]
    with Client(cluster.address) as client:
        handle = client.submit_sweep(sweep_yaml)
        first = play(scripted_worker, 0.7)
        assert main(["compare", handle.id, first, handle.id, "--csv", *flags]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert [r["job_id"] for r in rows] == [first, client.sweep(handle.id).trials()[1].job_id]
        with pytest.raises(SystemExit) as e:
            main(["compare", handle.id, "--metric", "acuracy", *flags])
        assert e.value.code == 2
        assert "invalid choice: 'acuracy'" in capsys.readouterr().err


def test_plot_writes_where_it_says_and_refuses_a_folder_or_format_it_cannot_write(
    capsys, cluster, scripted_worker, sweep_yaml, tmp_path
):
    pytest.importorskip("matplotlib")
    flags = ["--coordinator", cluster.address]
    with Client(cluster.address) as client:
        sweep_id = client.submit_sweep(sweep_yaml).id
    play(scripted_worker, 0.7)
    # No suffix: matplotlib adds .png; ftctl used to name the path it did not write.
    assert main(["plot", sweep_id, "-o", str(tmp_path / "curves"), *flags]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'curves.png'}"
    assert (tmp_path / "curves.png").is_file()
    # A folder: it used to write FOLDER.png beside it and say "wrote FOLDER".
    assert main(["plot", sweep_id, "-o", str(tmp_path), *flags]) == 1
    assert "is a folder" in capsys.readouterr().err
    assert not tmp_path.with_name(tmp_path.name + ".png").exists()
    # An unknown format: it used to be reported as "a bug in ftctl", after the download.
    assert main(["plot", "job-nope", "-o", str(tmp_path / "c.foo"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot write a .foo file" in err and ".png" in err
    assert "bug" not in err


def test_cancel_takes_a_sweep_id_as_get_does(capsys, cluster, sweep_yaml):
    # `ftctl get SWEEP` shows a sweep; `ftctl cancel SWEEP` answered "job sweep-... not found".
    flags = ["--coordinator", cluster.address]
    with Client(cluster.address) as client:
        handle = client.submit_sweep(sweep_yaml)
        assert main(["cancel", handle.id, *flags]) == 0
        assert capsys.readouterr().out.startswith(f"sweep {handle.id}: CANCELLED")
        assert handle.get().state is SweepState.CANCELLED
        assert main(["cancel", handle.id, *flags]) == 1  # as a job cancelled twice
        assert f"sweep {handle.id} already CANCELLED" in capsys.readouterr().err


def test_a_sweep_id_may_be_its_digits_or_a_unique_prefix_as_a_job_id_may(
    capsys, cluster, sweep_yaml
):
    flags = ["--coordinator", cluster.address]
    with Client(cluster.address) as client:
        handle = client.submit_sweep(sweep_yaml)
        digits = handle.id.removeprefix("sweep-")
        assert client.get_sweep(digits).id == handle.id
        assert client.get_sweep(f"sweep-{digits[:4]}").id == handle.id
        assert client.sweep(digits[:3]).get().id == handle.id
        typo = digits[:-1] + ("0" if digits[-1] != "0" else "1")
        with pytest.raises(NotFound, match=f"did you mean {handle.id}"):
            client.get_sweep(typo)
        assert main(["sweep", "get", digits[:5], *flags]) == 0
        assert handle.id in capsys.readouterr().out
        assert main(["sweep", "cancel", digits, *flags]) == 0
        assert handle.get().state is SweepState.CANCELLED


_GRPC_CORE_LOG = re.compile(r"[EWID]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]")


def _sigint_as_a_terminal_gives_it() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("verb", [["sweep", "submit"], ["submit"]])
def test_ctrl_c_while_following_says_one_thing_and_exits_130(cluster, sweep_yaml, job_yaml, verb):
    """A followed sweep said "stopped following; ..." and then "error: interrupted" too; a
    followed job said only the first (README: one message on stderr)."""
    path = sweep_yaml if verb[0] == "sweep" else job_yaml
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    proc = subprocess.Popen(
        [str(FTCTL), *verb, str(path), "-f", "--coordinator", cluster.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # As a user's terminal starts it. A shell's background job (a CI run started with
        # `&`) ignores SIGINT, and an ignored or blocked signal stays so across exec: this
        # ftctl would never see the Ctrl-C (the full suite's runs timed out here).
        preexec_fn=_sigint_as_a_terminal_gives_it,
    )
    assert proc.stdout.readline().startswith("submitted ")  # following now (no worker)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, err
    # gRPC's core may log one line of its own when the interrupted call's poller stops
    # ("E1207 ... ev_epoll1_linux.cc ... epoll_wait error"), GRPC_VERBOSITY=NONE or not;
    # ftctl's own output is what must be said once.
    ours = [line for line in err.splitlines() if line and not _GRPC_CORE_LOG.match(line)]
    assert len(ours) == 1 and ours[0].startswith("stopped following; "), err


def test_a_sweep_named_where_a_job_is_wanted_is_pointed_out(capsys, cluster, sweep_yaml):
    """A sweep's digits in `ftctl get`/`cancel`/`compare`, or its id in `ftctl logs`, were
    answered "job ... not found" alone, as if nothing had that id."""
    flags = ["--coordinator", cluster.address]
    with Client(cluster.address) as client:
        sweep_id = client.submit_sweep(sweep_yaml).id
        digits = sweep_id.removeprefix("sweep-")
        trials = f"its trials are jobs (`ftctl sweep get {sweep_id}` lists them)"
        with pytest.raises(NotFound) as info:
            client.get(digits)
        assert str(info.value) == (
            f"job job-{digits} not found; those digits are sweep {sweep_id}'s: {trials}"
        )
        with pytest.raises(NotFound, match=re.escape(f"{sweep_id} is a sweep, not a job")):
            list(client.events(sweep_id, follow=False))
    for argv in (["cancel", digits], ["logs", sweep_id], ["artifacts", sweep_id]):
        assert main([*argv, *flags]) == 1
        assert trials in capsys.readouterr().err, argv


@pytest.mark.parametrize("verb", ["run", "plan"])
def test_run_and_plan_refuse_a_sweep_file_as_submit_does(capsys, sweep_yaml, tmp_path, verb):
    # They trained (or planned) the base job, which is none of the sweep's points: here
    # strategy full, while the space holds head_only and last_k.
    argv = [verb, str(sweep_yaml)] + (["--out", str(tmp_path / "out")] if verb == "run" else [])
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "has a sweep: block" in err and f"ftctl sweep submit {sweep_yaml}" in err, err
    assert "freeze plan" not in out and not (tmp_path / "out").exists()


def test_a_followed_sweep_outlives_a_coordinator_restart(
    capsys, cluster, scripted_worker, sweep_yaml
):
    # `submit -f` keeps reconnecting a lost coordinator for 60 s; `sweep submit -f` polled
    # with one-shot calls and gave up after --connect-timeout, exit 1, the sweep running on.
    import threading

    flags = ["--coordinator", cluster.address, "--connect-timeout", "1"]
    codes: list[int] = []
    follower = threading.Thread(
        target=lambda: codes.append(main(["sweep", "submit", str(sweep_yaml), "-f", *flags]))
    )
    follower.start()
    with Client(cluster.address) as client:
        for _ in range(200):
            if client.list_sweeps():
                break
            threading.Event().wait(0.05)
    cluster.restart_coordinator(down_s=2.5)  # longer than --connect-timeout
    for accuracy in (0.6, 0.8, 0.7):
        play(scripted_worker, accuracy)
    follower.join(30)
    assert codes == [0], capsys.readouterr()
    assert "SUCCEEDED" in capsys.readouterr().out
