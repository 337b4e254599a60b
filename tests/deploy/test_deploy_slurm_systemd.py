"""deploy/slurm and deploy/systemd: the sbatch script is valid bash and starts one worker
per node with that node's GPU count (run here with stand-ins for srun and ftctl); the
systemd units pass `systemd-analyze verify` and their ExecStart lines are ones ftctl
accepts."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, parse_ftctl

SBATCH = DEPLOY / "slurm" / "tunefleet-workers.sbatch"
SYSTEMD = DEPLOY / "systemd"
UNITS = ("tunefleet-coordinator.service", "tunefleet-worker@.service")


def test_sbatch_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_directives_ask_for_one_task_per_node_with_gpus():
    directives = re.findall(r"^#SBATCH (\S+)", SBATCH.read_text(), flags=re.M)
    assert "--ntasks-per-node=1" in directives
    assert any(d.startswith("--gpus-per-node=") for d in directives)
    assert any(d.startswith("--signal=TERM@") for d in directives)


def _stand_ins(bin_dir: Path, record: Path) -> None:
    """`srun` runs its command once per "node"; `ftctl` records its arguments."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        "# Drop srun's own options, then run the command as two nodes would.\n"
        'while [[ "$1" == --* ]]; do shift; done\n'
        'for node in 0 1; do SLURM_GPUS_ON_NODE=$((node * 2 + 2)) SLURM_NODEID=$node "$@"; done\n'
    )
    (bin_dir / "ftctl").write_text(
        f'#!/bin/bash\nprintf "%s\\0" "$@" >> {shlex.quote(str(record))}\nprintf "\\n" >> {shlex.quote(str(record))}\n'
    )
    (bin_dir / "hostname").write_text('#!/bin/bash\necho "node$SLURM_NODEID"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)


def test_sbatch_starts_one_worker_per_node_with_its_gpus(tmp_path):
    bin_dir, record = tmp_path / "bin", tmp_path / "ftctl-calls"
    _stand_ins(bin_dir, record)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "TUNEFLEET_COORDINATOR": "coord.example:50051",
        "TUNEFLEET_ARTIFACTS": str(tmp_path / "artifacts"),
        "TUNEFLEET_VENV": str(tmp_path / "venv"),  # its bin/ comes first on PATH: absent here
        "TUNEFLEET_WORKER_ARGS": "--log-format json",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "2 workers for coord.example:50051" in result.stdout
    calls = [line.rstrip("\0").split("\0") for line in record.read_text().splitlines() if line]
    assert len(calls) == 2
    for node, argv in enumerate(calls):
        args = parse_ftctl(argv)
        assert args.command == "worker"
        assert args.coordinator == "coord.example:50051"
        assert args.gpus == node * 2 + 2, "each worker offers its own node's GPUs"
        assert args.id == f"slurm-4242-node{node}"
        assert args.artifacts == str(tmp_path / "artifacts") and args.log_format == "json"
    assert (tmp_path / "artifacts").is_dir()


def test_sbatch_refuses_to_start_without_a_coordinator(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "set TUNEFLEET_COORDINATOR" in result.stderr


def _exec_start(unit: Path) -> str:
    text = unit.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return line.split("=", 1)[1]


def _env_file(name: str) -> dict[str, str]:
    values = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.mark.parametrize(
    "unit, env_file, command",
    [
        ("tunefleet-coordinator.service", "coordinator.env.example", "server"),
        ("tunefleet-worker@.service", "worker.env.example", "worker"),
    ],
)
def test_unit_command_lines_are_ones_ftctl_accepts(unit, env_file, command):
    """ExecStart with the example env file's values, expanded as systemd does (${X} as one
    word, $X split at spaces) and %i/%H filled in."""
    env = _env_file(env_file)
    line = _exec_start(SYSTEMD / unit).replace("%i", "main").replace("%H", "gpu01")
    words = []
    for word in shlex.split(line):
        if m := re.fullmatch(r"\$\{(\w+)\}", word):
            words.append(env[m.group(1)])
        elif m := re.fullmatch(r"\$(\w+)", word):
            words += env.get(m.group(1), "").split()
        else:
            words.append(word)
    assert words[0] == "/opt/tunefleet/venv/bin/ftctl" and words[1] == command
    args = parse_ftctl(words[1:])
    if command == "server":
        assert args.tls_cert and args.tls_key and args.tokens and not args.insecure
    else:
        assert args.id == "gpu01-main"
        assert args.artifacts == env["TUNEFLEET_ARTIFACTS"]


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (structure is checked by the tests above)")
    ftctl = Path(sys.executable).with_name("ftctl")
    if not ftctl.exists():
        pytest.skip(f"{ftctl} not installed: verify needs an executable ExecStart")
    # verify checks that ExecStart's program exists: point it at this environment's ftctl.
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/tunefleet/venv/bin/ftctl", str(ftctl))
        (tmp_path / name).write_text(text)
    instance = tmp_path / "tunefleet-worker@main.service"
    shutil.copy(tmp_path / "tunefleet-worker@.service", instance)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / UNITS[0]), str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings
