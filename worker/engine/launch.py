"""The command line the worker runs for a job (no torch needed to build it).

One process:  python -m tunefleet.worker.engine --spec ... --out ... --events ...
N processes:  python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m
              tunefleet.worker.engine ...
On a CPU-only machine ``--multi_gpu`` still gives N gloo ranks (MULTI_CPU); ``--cpu`` would
start a single process. The launcher's precision/dynamo/machine flags are pinned so it never
prompts or warns about a missing accelerate config: the engine sets precision itself.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from tunefleet.v1 import spec_pb2

ENGINE_MODULE = "tunefleet.worker.engine"


def _free_port() -> int:
    # Two multi-process jobs on one worker must not share the rendezvous port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(
    spec: spec_pb2.JobSpec, spec_path: str | Path, out_dir: str | Path, events_path: str | Path
) -> list[str]:
    """argv for the engine child process of ``spec`` (resources.processes decides the form)."""
    engine_args = ["--spec", str(spec_path), "--out", str(out_dir), "--events", str(events_path)]
    processes = spec.resources.processes if spec.resources.HasField("processes") else 0
    if processes <= 0:
        processes = max(spec.resources.gpus, 1)
    if processes == 1:
        return [sys.executable, "-m", ENGINE_MODULE, *engine_args]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        ENGINE_MODULE,
        *engine_args,
    ]
