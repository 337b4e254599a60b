"""The command line the worker runs for a job (no torch needed to build it).

One process:  python -m tunefleet.worker.engine --spec ... --out ... --events ...
N processes:  python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m
              tunefleet.worker.engine ...
M machines:   the same launcher on each of the job's M workers, with --num_machines M,
              --machine_rank R, --main_process_ip/--main_process_port (the rendezvous on
              machine rank 0) and --num_processes M*N: accelerate's total across machines
              (it gives each machine num_processes // num_machines ranks).
On a CPU-only machine ``--multi_gpu`` still gives N gloo ranks (MULTI_CPU); ``--cpu`` would
start a single process. The launcher's precision/dynamo/machine flags are pinned so it never
prompts or warns about a missing accelerate config: the engine sets precision itself.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Protocol

from tunefleet.v1 import spec_pb2

ENGINE_MODULE = "tunefleet.worker.engine"


class MachineRendezvous(Protocol):
    """Where one machine of a multi-node job meets the others (tunefleet.v1.Rendezvous, as
    the coordinator's Assignment carries it)."""

    machine_rank: int
    num_machines: int
    main_process_ip: str
    main_process_port: int


def free_port() -> int:
    """A TCP port nothing listens on right now, on any of this host's addresses: a
    single-node job's rendezvous (two multi-process jobs on one worker must not share one),
    or the port a worker offers to host a multi-node job's (AcquireJobRequest)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def processes_per_node(spec: spec_pb2.JobSpec) -> int:
    processes = spec.resources.processes if spec.resources.HasField("processes") else 0
    return processes if processes > 0 else max(spec.resources.gpus, 1)


def build_command(
    spec: spec_pb2.JobSpec,
    spec_path: str | Path,
    out_dir: str | Path,
    events_path: str | Path,
    *,
    rendezvous: MachineRendezvous | None = None,
) -> list[str]:
    """argv for the engine child process of ``spec`` on one machine (resources.processes
    and, for a multi-node job, `rendezvous` decide the form)."""
    engine_args = ["--spec", str(spec_path), "--out", str(out_dir), "--events", str(events_path)]
    processes = processes_per_node(spec)
    machines = rendezvous.num_machines if rendezvous is not None else 1
    if spec.resources.nodes > 1 and machines != spec.resources.nodes:
        raise ValueError(
            f"resources.nodes is {spec.resources.nodes}, but this machine's rendezvous is for "
            f"{machines}: a multi-node job runs only as placed by the coordinator"
        )
    if processes == 1 and machines == 1:
        return [sys.executable, "-m", ENGINE_MODULE, *engine_args]
    if machines > 1:
        where = [
            "--machine_rank",
            str(rendezvous.machine_rank),
            "--main_process_ip",
            rendezvous.main_process_ip,
            "--main_process_port",
            str(rendezvous.main_process_port),
        ]
    else:
        where = ["--main_process_port", str(free_port())]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes * machines),
        "--num_machines",
        str(machines),
        *where,
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        ENGINE_MODULE,
        *engine_args,
    ]
