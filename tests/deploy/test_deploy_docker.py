"""Docker images and compose, checked without a Docker daemon: the Dockerfiles' structure,
the wheel they build (built here from exactly the files the build context admits), and
compose's services, volumes and command lines."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from deploy_helpers import DEPLOY, ROOT, dockerfile_instructions, exec_form, parse_ftctl

DOCKER = DEPLOY / "docker"
IMAGES = {"coordinator": "server", "worker": "worker"}


def _instructions(image: str) -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKER / f"Dockerfile.{image}")


def _last(instructions, keyword: str) -> str:
    return [args for kw, args in instructions if kw == keyword][-1]


def _runtime_stage(instructions) -> list[tuple[str, str]]:
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    return instructions[starts[-1] :]


def _arg_default(instructions, name: str) -> str:
    for kw, args in instructions:
        if kw == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_run_ftctl_as_a_non_root_user(image):
    instructions = _instructions(image)
    runtime = _runtime_stage(instructions)
    user = _last(runtime, "USER")
    assert user.split(":")[0] not in ("root", "0"), user
    entrypoint = exec_form(_last(runtime, "ENTRYPOINT"))
    assert entrypoint[-2:] == ["ftctl", IMAGES[image]]
    # The default command line is one ftctl accepts.
    parse_ftctl([IMAGES[image], *exec_form(_last(runtime, "CMD"))])


def test_coordinator_image_is_slim_without_torch_and_has_a_healthcheck():
    instructions = _instructions("coordinator")
    runtime = _runtime_stage(instructions)
    assert "slim" in _arg_default(instructions, "PYTHON_IMAGE")
    installs = " ".join(args for kw, args in runtime if kw == "RUN" and "pip install" in args)
    assert "/wheels/" in installs and "[worker]" not in installs and "torch" not in installs
    healthcheck = _last(runtime, "HEALTHCHECK")
    command = exec_form(healthcheck.split("CMD", 1)[1])
    assert command[:3] == ["python", "-m", "tunefleet.coordinator.health"]
    assert "--interval=" in healthcheck and "--timeout=" in healthcheck
    assert "50051" in _last(runtime, "EXPOSE") and "9464" in _last(runtime, "EXPOSE")


def test_worker_image_is_cuda_based_with_the_worker_extra():
    instructions = _instructions("worker")
    runtime = _runtime_stage(instructions)
    assert _arg_default(instructions, "CUDA_IMAGE").startswith("nvidia/cuda:")
    assert _last(runtime, "FROM") == "${CUDA_IMAGE}"
    installs = " ".join(args for kw, args in runtime if kw == "RUN" and "pip install" in args)
    assert "[worker]" in installs
    entrypoint = exec_form(_last(runtime, "ENTRYPOINT"))
    assert entrypoint[0] == "tini", "orphaned training processes need an init to reap them"


def _admitted(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore (last match wins, `!` re-includes) lets `path` through."""
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path, glob.rstrip("/*") + "/*"):
            keep = negate
    return keep


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_context_and_wheel(image, tmp_path):
    """The files the Dockerfile copies pass its .dockerignore, nothing heavy does, and
    `pip wheel .` on exactly those files gives a wheel with every package."""
    ignore = DOCKER / f"Dockerfile.{image}.dockerignore"
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [
        source
        for kw, args in _instructions(image)
        if kw == "COPY" and not args.startswith("--")
        for source in args.split()[:-1]
    ]
    assert {"pyproject.toml", "README.md", "proto", "coordinator", "worker", "client"} <= set(
        copies
    )
    context = tmp_path / "context"
    for source in copies:
        for file in [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"):
            relative = file.relative_to(ROOT).as_posix()
            if file.is_file() and _admitted(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, context / relative)
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "client/__pycache__/x.pyc"):
        assert not _admitted(heavy, patterns), heavy

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("tunefleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "tunefleet/v1/coordinator_pb2.py",
        "tunefleet/logging_setup.py",
        "tunefleet/coordinator/health.py",
        "tunefleet/coordinator/metrics.py",
        "tunefleet/worker/engine/trainer.py",
        "tunefleet/worker/engine/data/text.py",  # a subpackage: listed in pyproject's packages
        "tunefleet/worker/artifact_store.py",
        "tunefleet/client/cli/__init__.py",
        "tunefleet/client/cli/jobs.py",
    ):
        assert module in names, module


# ---- compose --------------------------------------------------------------------------


def _compose(*files: str) -> dict:
    """The files merged the way `docker compose -f A -f B` does, for the keys used here."""
    merged: dict = {}
    for name in files:
        _merge(merged, yaml.safe_load((DOCKER / name).read_text()))
    return merged


def _merge(into: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def test_compose_runs_a_coordinator_and_two_workers_sharing_artifacts():
    compose = _compose("compose.yaml")
    services = compose["services"]
    assert set(services) == {"coordinator", "worker-1", "worker-2"}
    assert set(compose["volumes"]) >= {"artifacts", "coordinator-db"}

    coordinator = services["coordinator"]
    args = parse_ftctl(["server", *coordinator["command"]])
    assert args.listen.startswith("0.0.0.0:") and args.insecure
    assert args.metrics_port == 9464 and args.log_format == "json"
    # Plaintext is acceptable only because nothing beyond this host's loopback reaches it.
    assert all(p.startswith("127.0.0.1:") for p in coordinator["ports"])
    health = coordinator["healthcheck"]["test"]
    assert health[:4] == ["CMD", "python", "-m", "tunefleet.coordinator.health"]
    db_mount = coordinator["volumes"][0].split(":")
    assert db_mount[0] == "coordinator-db" and args.db.startswith(db_mount[1])

    ids = set()
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        args = parse_ftctl(["worker", *worker["command"]])
        ids.add(args.id)
        assert worker["environment"]["TUNEFLEET_COORDINATOR"] == "coordinator:50051"
        assert f"artifacts:{args.artifacts}" in worker["volumes"]
        assert worker["depends_on"]["coordinator"]["condition"] == "service_healthy"
        assert worker["build"]["dockerfile"] == "deploy/docker/Dockerfile.worker"
        assert (DOCKER / worker["build"]["context"] / worker["build"]["dockerfile"]).exists()
        assert "deploy" not in worker, "CPU by default: GPUs come from compose.gpu.yaml"
        # The image's ENTRYPOINT is tini; a second init makes it warn at every start.
        assert not worker.get("init"), "tini (the image's entrypoint) is its init"
    assert len(ids) == 2, "each worker needs its own id"


def test_compose_gpu_override_reserves_one_gpu_per_worker():
    compose = _compose("compose.yaml", "compose.gpu.yaml")
    devices = []
    for name in ("worker-1", "worker-2"):
        (device,) = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        devices += device["device_ids"]
        assert compose["services"][name]["command"], "the override keeps the base command"
    assert sorted(devices) == ["0", "1"]
    assert "deploy" not in compose["services"]["coordinator"]


@pytest.mark.skipif(not shutil.which("docker"), reason="docker CLI not installed")
def test_compose_config_when_docker_compose_is_available():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here")
    result = subprocess.run(
        ["docker", "compose", "-f", "compose.yaml", "-f", "compose.gpu.yaml", "config", "-q"],
        cwd=DOCKER, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_paths_in_compose_resolve(tmp_path):
    compose = _compose("compose.yaml")
    context = (DOCKER / compose["services"]["coordinator"]["build"]["context"]).resolve()
    assert context == ROOT
    assert Path(context / compose["services"]["coordinator"]["build"]["dockerfile"]).exists()
