"""The closing summary (`submit --follow`, `run`) and `ftctl get`: a headline, the
compression table, nothing else (every figure stays in --json).

Fails on the code before: one `metrics:` line of every summary key, unsorted by meaning
(`fp32_nonzero_params 2.27e+07 ... pruned_size_ratio 1 ...`), no word on which checkpoint
was exported and why, and no explanation of a pruned model's eval loss jump.
"""

from __future__ import annotations

import io

from rich.console import Console

from tunefleet.client import Job, JobState
from tunefleet.client.render import render_job, render_summary
from tunefleet.client.summary_view import compression_table, headline_lines
from tunefleet.v1 import job_pb2

SUMMARY = {
    "steps": 240.0,
    "best_step": 120.0,
    "train_samples_per_s": 20.4,
    "eval_accuracy": 0.9925,
    "eval_macro_f1": 0.9922,
    "eval_loss": 0.19,
    "test_accuracy": 0.98,
    "test_macro_f1": 0.9791,
    "test_loss": 0.21,
    "fp32_accuracy": 0.9925,
    "fp32_macro_f1": 0.9922,
    "fp32_loss": 0.19,
    "fp32_size_mb": 91.59,
    "fp32_nonzero_params": 22714753.0,
    "fp32_latency_ms": 20.0,
    "pruned_accuracy": 0.98,
    "pruned_macro_f1": 0.9801,
    "pruned_loss": 0.82,
    "pruned_size_mb": 91.59,
    "pruned_nonzero_params": 19485467.0,
    "pruned_latency_ms": 20.5,
    "pruned_speedup": 0.9756,
    "pruned_size_ratio": 1.0,
    "pruned_sparsity": 0.3,
    "int8_accuracy": 0.9825,
    "int8_macro_f1": 0.9824,
    "int8_loss": 0.83,
    "int8_size_mb": 59.3,
    "int8_nonzero_params": 19235434.0,
    "int8_latency_ms": 10.15,
    "int8_speedup": 1.9704,
    "int8_size_ratio": 0.6475,
}
ARTIFACTS = {
    "model": "/runs/job-1/model",
    "model_pruned": "/runs/job-1/model_pruned",
    "model_int8": "/runs/job-1/model_int8",
    "checkpoints": "/runs/job-1/checkpoints",
}


def plain() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False), out


def test_headline_leads_with_the_jobs_metric_and_why_that_step():
    rows = headline_lines(
        {**SUMMARY, "selected_step": 120.0}, metric="macro_f1", artifacts=ARTIFACTS
    )
    assert rows == [
        ("selected", "step 120 of 240 by validation macro_f1 (ties -> lower eval loss)"),
        ("validation", "macro_f1 0.9922  accuracy 0.9925  loss 0.1900"),
        ("test", "macro_f1 0.9791  accuracy 0.9800  loss 0.2100"),
        ("training", "240 steps · 20.4 samples/s"),
        ("model", "/runs/job-1/model"),
        ("also", "checkpoints, model_int8, model_pruned (beside it)"),
    ]
    # Without the engine's selected_step: the best step, said so.
    assert headline_lines(SUMMARY)[0] == ("selected", "step 120 of 240: best validation accuracy")


def test_the_summary_block_and_its_compression_table():
    console, out = plain()
    render_summary(
        console, state=JobState.SUCCEEDED,
        summary=SUMMARY, artifacts=ARTIFACTS, duration_s=227, title="job job-1 (minilm)",
    )  # fmt: skip
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert lines[:6] == [
        "SUCCEEDED job job-1 (minilm) in 3m47s",
        "  selected    step 120 of 240: best validation accuracy",
        "  validation  accuracy 0.9925  macro_f1 0.9922  loss 0.1900",
        "  test        accuracy 0.9800  macro_f1 0.9791  loss 0.2100",
        "  training    240 steps · 20.4 samples/s",
        "  model       /runs/job-1/model",
    ]
    text = out.getvalue()
    assert "fp32_nonzero_params" not in text and "pruned_size_ratio" not in text
    header = next(line for line in lines if "variant" in line).split()
    assert header == ["variant", "size", "MB", "non-zero", "params", "accuracy", "eval",
                      "loss", "latency", "ms", "speed-up"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("    ")}
    assert rows["fp32"] == ["91.6", "22,714,753", "0.9925", "0.1900", "20.00", "1.00x"]
    assert rows["pruned"] == ["91.6", "19,485,467", "0.9800", "0.8200", "20.50", "0.98x"]
    assert rows["pruned+int8"] == ["59.3", "19,235,434", "0.9825", "0.8300", "10.15", "1.97x"]
    assert "* eval loss rises while accuracy holds: pruning shrank the logits" in text
    assert "* pruned: zeros kept in dense tensors" in text


def test_no_table_without_compression_and_no_loss_note_when_loss_holds():
    assert compression_table({"eval_accuracy": 0.9}) == (None, [])
    held = {**SUMMARY, "pruned_loss": 0.2, "int8_loss": 0.21}
    _, notes = compression_table(held)
    assert not any("eval loss rises" in n for n in notes)


def test_get_prints_the_headline_after_the_state_table():
    msg = job_pb2.Job(id="job-1", state=job_pb2.SUCCEEDED, summary=SUMMARY, artifacts=ARTIFACTS)
    msg.spec.eval.metric = "macro_f1"
    console, out = plain()
    render_job(console, Job.from_proto(msg))
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert "selected    step 120 of 240: best validation macro_f1" in lines
    assert "validation  macro_f1 0.9922  accuracy 0.9925  loss 0.1900" in lines
    assert lines[-1] == "every figure: ftctl get job-1 --json; paths: ftctl artifacts job-1"
    assert any(line.split()[:2] == ["variant", "size"] and "macro_f1" in line for line in lines)


def test_a_loss_selected_step_says_its_own_tie_rule():
    """metric loss: the engine breaks a tie toward the later step (selection.py); there is
    no lower eval loss to fall back on, as the accuracy wording said."""
    rows = headline_lines({**SUMMARY, "selected_step": 120.0}, metric="loss")
    assert rows[0] == ("selected", "step 120 of 240 by validation loss (ties -> the later step)")
    assert rows[1] == ("validation", "loss 0.1900  accuracy 0.9925  macro_f1 0.9922")


def test_a_loss_selected_jobs_compression_table_shows_accuracy_beside_the_loss():
    """metric loss: the table's metric column repeated the eval loss column and hid the
    accuracy each variant kept, and the "loss rises while the metric holds" note compared
    the loss with itself, so it never showed."""
    console, out = plain()
    render_summary(console, state=JobState.SUCCEEDED, summary=SUMMARY, metric="loss")
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    header = next(line for line in lines if "variant" in line).split()
    assert header == ["variant", "size", "MB", "non-zero", "params", "accuracy", "eval",
                      "loss", "latency", "ms", "speed-up"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("    ")}
    assert rows["pruned"] == ["91.6", "19,485,467", "0.9800", "0.8200", "20.50", "0.98x"]
    assert "* eval loss rises while accuracy holds" in out.getvalue()
