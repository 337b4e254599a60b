"""The end of a job as a person reads it: a headline, then the compression table.

A job's summary is a flat map of ~40 figures (the engine's result.json). Printed as one
line, nobody finds the answer to "how good is the model, and which one is it?" in it. So
`ftctl submit --follow`, `ftctl run` and `ftctl get` print, in this order:

    selected step 120 of 240 by accuracy (ties -> lower eval loss)
    validation  accuracy 0.9925  macro_f1 0.9925  loss 0.0412
    test        accuracy 0.9870  macro_f1 0.9869  loss 0.0520
    training    240 steps · 20.4 samples/s
    model       /runs/job-1/model

and, when the job compressed its model, one row per variant (size, non-zero parameters,
the job's metric, eval loss, CPU latency, speed-up) with a footnote on what the figures
mean. Every figure stays in `ftctl get JOB --json` and the SDK's `Job.summary`.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich import box
from rich.table import Table
from rich.text import Text

from tunefleet.limits import printable

__all__ = ["compression_table", "headline_lines"]

# Validation first, in the order people look for them; the job's metric leads.
_METRICS = ("accuracy", "macro_f1", "loss")
# Compression variants as the engine names their summary keys (compression.py).
_VARIANTS = (("fp32", "fp32"), ("pruned", "pruned"), ("int8", "int8"))
# A variant whose eval loss rises this much (relative) while its metric holds gets the
# footnote that explains it.
_LOSS_RISE, _METRIC_HOLD = 0.5, 0.02


def _metric_order(metric: str) -> list[str]:
    return [metric] + [m for m in _METRICS if m != metric]


def _figures(values: Mapping[str, float], metric: str) -> str:
    keys = [k for k in _metric_order(metric) if k in values]
    return "  ".join(f"{printable(k)} {values[k]:.4f}" for k in keys)


def _role(summary: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: v for k, v in summary.items() if k.startswith(prefix)}


def headline_lines(
    summary: Mapping[str, float],
    *,
    metric: str = "accuracy",
    artifacts: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """(label, text) rows: which checkpoint and why, validation, test, training, model."""
    metric = metric or "accuracy"
    rows: list[tuple[str, str]] = []
    steps = summary.get("steps")
    of = f" of {steps:,.0f}" if steps else ""
    if "selected_step" in summary:
        # The engine's tie rule (worker/engine/selection.py): the loss has no lower loss to
        # fall back on, so its ties go to the later step.
        ties = "the later step" if metric == "loss" else "lower eval loss"
        rows.append(
            (
                "selected",
                f"step {summary['selected_step']:,.0f}{of} by validation {metric} (ties -> {ties})",
            )  # fmt: skip
        )
    elif "best_step" in summary:
        rows.append(("selected", f"step {summary['best_step']:,.0f}{of}: best validation {metric}"))
    validation, test = _role(summary, "eval_"), _role(summary, "test_")
    if validation:
        rows.append(("validation", _figures(validation, metric)))
    if test:
        rows.append(("test", _figures(test, metric)))
    training = []
    if steps:
        training.append(f"{steps:,.0f} steps")
    if "train_samples_per_s" in summary:
        training.append(f"{summary['train_samples_per_s']:.1f} samples/s")
    if training:
        rows.append(("training", " · ".join(training)))
    if artifacts and "model" in artifacts:
        rows.append(("model", printable(artifacts["model"])))
    others = sorted(k for k in (artifacts or {}) if k != "model")
    if others:
        rows.append(("also", printable(", ".join(others) + _beside(artifacts or {}, others))))
    return rows


def _beside(artifacts: Mapping[str, str], names: list[str]) -> str:
    """ " beside it" when every other artifact is in the model's folder's parent."""
    model = artifacts.get("model", "")
    parent = model.rstrip("/").rsplit("/", 1)[0] if "/" in model else None
    if parent and all(artifacts[n].startswith(parent + "/") for n in names):
        return " (beside it)"
    return ""


def compression_table(
    summary: Mapping[str, float], *, metric: str = "accuracy"
) -> tuple[Table | None, list[str]]:
    """The compression variants side by side, and footnotes; (None, []) without any.

    The job's metric has a column beside the eval loss; a job that selects by the loss
    gets accuracy there instead (a second loss column would hide what pruning did to it)."""
    metric = metric or "accuracy"
    if metric == "loss":
        metric = "accuracy"
    variants = [
        (key, label) for key, label in _VARIANTS if f"{key}_size_mb" in summary or
        f"{key}_{metric}" in summary
    ]  # fmt: skip
    if len(variants) < 2:  # fp32 alone: nothing was compressed
        return None, []
    if "pruned" in dict(variants) and "int8" in dict(variants):
        variants = [(k, "pruned+int8" if k == "int8" else label) for k, label in variants]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, col in enumerate(
        ("variant", "size MB", "non-zero params", metric, "eval loss", "latency ms", "speed-up")
    ):
        table.add_column(col, justify="left" if i == 0 else "right")

    def cell(key: str, name: str, fmt: str) -> str:
        value = summary.get(f"{key}_{name}")
        return "-" if value is None else format(value, fmt)

    for key, label in variants:
        speedup = summary.get(f"{key}_speedup", 1.0 if key == "fp32" else None)
        table.add_row(
            label,
            cell(key, "size_mb", ".1f"),
            cell(key, "nonzero_params", ",.0f"),
            cell(key, metric, ".4f"),
            cell(key, "loss", ".4f"),
            cell(key, "latency_ms", ".2f"),
            "-" if speedup is None else f"{speedup:.2f}x",
        )
    return table, _footnotes(summary, metric, [k for k, _ in variants])


def _footnotes(summary: Mapping[str, float], metric: str, keys: list[str]) -> list[str]:
    notes = []
    base_loss, base_metric = summary.get("fp32_loss"), summary.get(f"fp32_{metric}")
    risen = [
        k
        for k in keys[1:]
        if base_loss
        and summary.get(f"{k}_loss", 0) > base_loss * (1 + _LOSS_RISE)
        and base_metric is not None
        and abs(summary.get(f"{k}_{metric}", base_metric) - base_metric) <= _METRIC_HOLD
    ]
    if risen:
        notes.append(
            f"eval loss rises while {metric} holds: pruning shrank the logits, so the model "
            "is as often right but less sure, which cross-entropy punishes; "
            "prune.recovery_steps fine-tunes the pruned model back (README, Compression)"
        )
    if "pruned" in keys and summary.get("pruned_size_ratio", 0) > 0.95:
        notes.append(
            "pruned: zeros kept in dense tensors, so no smaller or faster than fp32 "
            "(prune.method: structured makes BERT-style encoders narrower)"
        )
    notes.append("latency: CPU, one eval batch, median of interleaved runs")
    return notes


def footnote_texts(notes: list[str]) -> list[Text]:
    return [Text(f"  * {printable(n)}", style="dim") for n in notes]
