"""`ftctl workers` and `ftctl worker drain ID`: the workers as the coordinator sees them
(SDK calls; running a worker is tunefleet.client.cli.worker)."""

from __future__ import annotations

import json

from tunefleet.client.cli.common import EXIT_OK, Commands, client, stdout
from tunefleet.client.errors import TunefleetError
from tunefleet.client.render import workers_table


def register(commands: Commands) -> None:
    p = commands.add("workers", list_workers, "list workers")
    p.add_argument("--json", action="store_true", help="print JSON")


def list_workers(args) -> int:
    with client(args) as sdk:
        workers = sdk.workers()
    console = stdout()
    if args.json:
        print(json.dumps([worker_dict(w) for w in workers], indent=2))
    elif not workers:
        console.print(
            f"no workers registered; start one with: ftctl worker --coordinator {sdk.target}"
        )
    else:
        console.print(workers_table(workers))
    return EXIT_OK


def drain(args) -> int:
    """`ftctl worker drain WORKER_ID` (admin)."""
    if not args.worker_id:
        raise TunefleetError(
            "ftctl worker drain WORKER_ID: which worker? `ftctl workers` lists them"
        )
    with client(args) as sdk:
        worker = sdk.drain_worker(args.worker_id)
    jobs = ", ".join(worker.job_ids) or "no job"
    stdout().print(
        f"worker {worker.id} is {worker.state}: it takes no new jobs; {jobs} will checkpoint "
        "and resume elsewhere, then the worker exits"
    )
    return EXIT_OK


def worker_dict(w) -> dict:
    """`ftctl workers --json`: one worker as JSON-ready values."""
    return {
        "id": w.id,
        "hostname": w.hostname,
        "state": w.state,
        "gpus": w.gpus,
        "free_gpus": w.free_gpus,
        "cpus": w.cpus,
        "job_ids": list(w.job_ids),
        "last_heartbeat_age_s": w.last_heartbeat_age_s,
        "unhealthy_reason": w.unhealthy_reason,
    }
