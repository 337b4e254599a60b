"""`ftctl compare JOB|SWEEP...`: which fine-tuning won. One row per job (a sweep stands for
its trials): the chosen metric on the validation and the test set, the spec fields that
differ between the jobs, wall time; sorted by the metric, the best marked. `--json` and
`--csv` print the same rows for scripts and spreadsheets."""

from __future__ import annotations

import csv
import io
import json
import math

from rich.table import Table
from rich.text import Text

from tunefleet.client.cli.common import EXIT_OK, Commands, client, json_text, stdout
from tunefleet.client.errors import TunefleetError
from tunefleet.client.types import Job
from tunefleet.limits import printable
from tunefleet.spec.choices import EVAL_METRICS

# Fields that differ between any two jobs without saying anything about how they train.
_IGNORED = ("name", "labels.", "output.", "sweep.")


def register(commands: Commands) -> None:
    p = commands.add("compare", compare, "compare jobs and sweeps' trials by a metric")
    p.add_argument("ids", nargs="+", metavar="JOB|SWEEP")
    p.add_argument(
        "--metric",
        default=None,
        choices=EVAL_METRICS,
        help="accuracy | macro_f1 | loss (default: the sweep's metric, else the first "
        "job's eval.metric)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--csv", action="store_true", help="print CSV")


def compare(args) -> int:
    jobs: dict[str, Job] = {}  # by id: a job named twice (or in its sweep too) is one row
    metric = args.metric
    with client(args) as sdk:
        for name in args.ids:
            if name.startswith("sweep-"):
                sweep = sdk.get_sweep(name)
                metric = metric or sweep.metric
                for t in sweep.trials:
                    if t.job_id and t.job_id not in jobs:
                        jobs[t.job_id] = sdk.get(t.job_id)
            else:
                job = sdk.get(name)  # digits or a prefix: keyed by the full id
                jobs.setdefault(job.id, job)
    if not jobs:
        raise TunefleetError("nothing to compare: the sweeps have no trials yet")
    first = next(iter(jobs.values()))
    metric = metric or first.spec.eval.metric or "accuracy"
    rows = comparison(list(jobs.values()), metric)
    if args.json:
        print(json_text({"metric": metric, "rows": rows}))
    elif args.csv:
        print(to_csv(rows, metric), end="")
    else:
        stdout().print(to_table(rows, metric))
    return EXIT_OK


def _flat(data, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{path}."))
        else:
            out[path] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def comparison(jobs: list[Job], metric: str) -> list[dict]:
    """The rows, best first (lowest loss, else highest value); jobs without the metric, or
    with a NaN or infinite one (a diverged run, which its sweep counts as failed), last."""
    from tunefleet.spec import spec_to_dict

    specs = [_flat(spec_to_dict(j.spec)) for j in jobs]
    keys = sorted({k for s in specs for k in s if not k.startswith(_IGNORED)})
    differ = [k for k in keys if len({s.get(k, "") for s in specs}) > 1]
    rows = [
        {
            "job_id": j.id,
            "name": j.name,
            "state": j.state.value,
            "validation": j.validation_metrics.get(metric),
            "test": j.test_metrics.get(metric),
            "params": {k: s.get(k, "") for k in differ},
            "wall_s": None if j.duration_s is None else round(j.duration_s, 1),
            "best": False,
        }
        for j, s in zip(jobs, specs, strict=True)
    ]
    sign = 1 if metric == "loss" else -1

    def ranked(r: dict) -> bool:
        return r["validation"] is not None and math.isfinite(r["validation"])

    rows.sort(key=lambda r: (not ranked(r), sign * r["validation"] if ranked(r) else 0.0))
    if rows and ranked(rows[0]):
        rows[0]["best"] = True
    return rows


def to_csv(rows: list[dict], metric: str) -> str:
    params = list(rows[0]["params"]) if rows else []
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["job_id", "name", "state", f"validation_{metric}", f"test_{metric}",
                     "wall_s", "best", *params])  # fmt: skip
    for r in rows:
        writer.writerow(
            [
                r["job_id"],
                r["name"],
                r["state"],
                r["validation"],
                r["test"],
                r["wall_s"],
                r["best"],
                *(r["params"][p] for p in params),
            ]  # fmt: skip
        )
    return buffer.getvalue()


def to_table(rows: list[dict], metric: str) -> Table:
    table = Table(title=f"by validation {metric}, best first")
    params = list(rows[0]["params"]) if rows else []
    for column in ("", "job", "name", "state", f"validation {metric}", f"test {metric}",
                   "wall", *params):  # fmt: skip
        table.add_column(column)

    def num(v):
        return "" if v is None else f"{v:.4f}"

    for r in rows:
        table.add_row(
            Text("*", style="bold green") if r["best"] else "",
            r["job_id"],
            printable(r["name"]),
            r["state"],
            num(r["validation"]),
            num(r["test"]),
            "" if r["wall_s"] is None else f"{r['wall_s']:g} s",
            *(printable(r["params"][p]) for p in params),
        )
    return table
