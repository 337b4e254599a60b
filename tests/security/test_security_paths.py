"""Job paths confined to the worker's allowed roots: `..` and symlinks cannot escape, and a
job that strays is FAILED before its training process starts."""

from __future__ import annotations

import sys
import threading

import pytest
from security_helpers import make_spec

from tunefleet.client import Client
from tunefleet.v1 import spec_pb2
from tunefleet.worker.daemon import WorkerDaemon
from tunefleet.worker.path_policy import PathPolicy, roots_from_env


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    (allowed / "models" / "bert").mkdir(parents=True)
    (allowed / "data" / "train.csv").write_text("text,label\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("text,label\n")
    return allowed, outside


def spec_with(**fields) -> spec_pb2.JobSpec:
    spec = make_spec()
    for dotted, value in fields.items():
        section, name = dotted.split("__")
        setattr(getattr(spec, section), name, value)
    return spec


def test_paths_inside_the_roots_pass(roots, tmp_path):
    allowed, _ = roots
    policy = PathPolicy([allowed], always_allowed=[tmp_path / "artifacts"], cwd=tmp_path)
    spec = spec_with(
        model__name=str(allowed / "models" / "bert"),
        data__train=str(allowed / "data" / "train.csv"),
        data__eval=str(allowed / "data" / "eval.csv"),  # need not exist yet
        output__dir=str(allowed / "runs" / "new"),
    )
    assert policy.check(spec) is None
    # Hub ids are not paths; the artifacts folder is always allowed.
    spec = spec_with(
        model__name="bert-base-uncased",
        data__train=str(allowed / "data" / "train.csv"),
        data__eval="",
        output__dir=str(tmp_path / "artifacts" / "job-1"),
    )
    assert policy.check(spec) is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("data__train", "{outside}/secret.csv"),
        ("data__eval", "{allowed}/data/../../outside/secret.csv"),
        ("data__test", "{outside}/secret.csv"),  # the test set is read like train
        ("model__name", "{outside}"),
        ("model__checkpoint", "/etc/passwd"),
        ("output__dir", "{allowed}/../outside/run"),
        ("output__dir", "{allowed}/link/run"),  # a symlink inside that points out
        ("data__train", "{allowed}-evil/train.csv"),  # a sibling sharing the prefix
    ],
)
def test_paths_that_lead_outside_are_named(roots, tmp_path, field, value):
    allowed, outside = roots
    (allowed / "link").symlink_to(outside)
    value = value.format(allowed=allowed, outside=outside)
    spec = spec_with(**{field: value})
    reason = PathPolicy([allowed], cwd=tmp_path).check(spec)
    assert reason is not None
    assert f"{field.replace('__', '.')}: {value}" in reason
    # The submitter learns neither the worker's allowed roots nor where a symlink leads
    # (the worker's log has both): the reason is no oracle for the worker's file system.
    if str(allowed) not in value:
        assert str(allowed) not in reason
    assert "resolves to" not in reason


def test_other_sources_name_their_path_fields(roots, tmp_path):
    allowed, outside = roots
    policy = PathPolicy([allowed], cwd=tmp_path)
    images = spec_pb2.JobSpec(
        data=spec_pb2.DataSpec(source="imagefolder", root=str(allowed), train="../outside")
    )
    assert "data.train" in policy.check(images)
    vision = spec_pb2.JobSpec(data=spec_pb2.DataSpec(source="torchvision", root=str(outside)))
    assert "data.root" in policy.check(vision)
    hf_local = spec_pb2.JobSpec(data=spec_pb2.DataSpec(source="hf", name=str(outside)))
    assert "data.name" in policy.check(hf_local)
    hf_hub = spec_pb2.JobSpec(data=spec_pb2.DataSpec(source="hf", name="glue", train="train"))
    assert policy.check(hf_hub) is None
    # A "hub id" that is really a folder under the working directory is a path.
    (tmp_path / "org" / "model").mkdir(parents=True)
    sneaky = spec_pb2.JobSpec(model=spec_pb2.ModelSpec(source="hf", name="org/model"))
    assert "model.name" in policy.check(sneaky)


def test_no_roots_means_unrestricted(roots, tmp_path):
    _, outside = roots
    policy = PathPolicy([], cwd=tmp_path)
    assert not policy.restricted
    assert policy.check(spec_with(data__train=str(outside / "secret.csv"))) is None
    assert roots_from_env({"TUNEFLEET_ALLOWED_ROOTS": "/a:/b:"}) == ["/a", "/b"]


def test_worker_fails_a_straying_job_before_training(start, roots, tmp_path):
    allowed, outside = roots
    server = start()
    launched = []

    def command(spec, spec_path, out_dir, events_path):
        launched.append(spec.name)
        script = (
            "import json, sys, pathlib; "
            "pathlib.Path(sys.argv[1], 'result.json').write_text("
            "json.dumps({'artifacts': {}, 'summary': {}}))"
        )
        return [sys.executable, "-c", script, str(out_dir)]

    daemon = WorkerDaemon(
        server.address,
        artifacts_root=tmp_path / "artifacts",
        gpus=0,
        worker_id="w-confined",
        poll_s=0.5,
        command_factory=command,
        allowed_roots=(allowed,),
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        with Client(server.address) as client:
            bad = client.submit(
                spec_with(
                    model__name=str(allowed / "models" / "bert"),
                    data__train=f"{allowed}/data/../../outside/secret.csv",
                ),
                check_paths=False,
            )
            good = client.submit(
                spec_with(
                    model__name=str(allowed / "models" / "bert"),
                    data__train=str(allowed / "data" / "train.csv"),
                    data__eval="",
                ),
                check_paths=False,
            )
            failed = bad.wait(timeout=30)
            assert failed.state.value == "FAILED"
            assert "outside the folders this worker allows" in failed.reason
            # The path as written, never where it resolves to nor the worker's roots.
            assert f"data.train: {allowed}/data/../../outside/secret.csv" in failed.reason
            assert "resolves to" not in failed.reason and "(allowed roots" not in failed.reason
            assert good.wait(timeout=30).state.value == "SUCCEEDED"
    finally:
        daemon.stop()
        thread.join(timeout=10)
    assert launched == ["job"]  # only the good job's training process ever started
    assert not (outside / "run").exists()


def test_worker_command_line_has_the_flag(capsys):
    from tunefleet.worker.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--allowed-root" in out and "--token-file" in out and "--tls-ca" in out
