"""The contract around the package: committed bindings are fresh, the namespace is clean."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_proto_code_is_fresh(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "proto" / "gen.sh"), str(tmp_path)], check=True, env=env)
    generated = sorted(p.name for p in (tmp_path / "tunefleet" / "v1").iterdir())
    committed_dir = ROOT / "proto" / "tunefleet" / "v1"
    assert generated, "protoc produced nothing"
    stale = [
        name
        for name in generated
        if not (committed_dir / name).exists()
        or not filecmp.cmp(
            tmp_path / "tunefleet" / "v1" / name, committed_dir / name, shallow=False
        )
    ]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


def _run_isolated(code: str, tmp_path) -> subprocess.CompletedProcess:
    # cwd outside the repo, so only what is installed can be imported.
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )


def test_single_import_namespace(tmp_path):
    code = (
        "import importlib.util as u\n"
        "for name in ('client', 'worker', 'coordinator', 'proto'):\n"
        "    assert u.find_spec(name) is None, name\n"
        "import tunefleet.client, tunefleet.coordinator, tunefleet.worker, tunefleet.spec\n"
        "import tunefleet.v1.coordinator_pb2_grpc\n"
    )
    result = _run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr


def test_sdk_and_coordinator_import_without_torch(tmp_path):
    code = (
        "import sys\n"
        "import tunefleet.client, tunefleet.client.cli, tunefleet.coordinator, tunefleet.spec\n"
        "import tunefleet.worker\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = _run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr
