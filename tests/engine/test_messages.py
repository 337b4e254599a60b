"""Messages a newcomer reads: the run line in plain words, a warning for runs too short to
train, and data errors that name the file and the line an editor shows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_data import TRAIN, make_spec, tokenizer  # noqa: F401 (a fixture)

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.data import load_data
from tunefleet.worker.engine.data.tables import _read_file_table as read_table
from tunefleet.worker.engine.devices import describe_run, few_steps_warning, native_cpu_bf16
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.task import Task
from tunefleet.worker.engine.trainer import run_job


def accelerator(n: int, device: str, precision: str):
    return SimpleNamespace(
        num_processes=n, device=SimpleNamespace(type=device), mixed_precision=precision
    )


def test_the_run_line_says_processes_device_and_precision_in_words():
    line = describe_run(accelerator(1, "cpu", "no"), 16, 50)
    assert line == (
        "training on 1 CPU process, fp32 (no mixed precision), global batch 16, 50 optimizer steps"
    )
    line = describe_run(accelerator(2, "cpu", "bf16"), 32, 25)
    assert line.startswith(
        "training on 2 CPU processes (gloo), bf16 mixed precision, global batch 32"
    )
    assert "process(es)" not in line and "NO" not in line


def test_bf16_on_a_cpu_without_native_bf16_says_it_is_slower():
    assert native_cpu_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n") is True
    assert native_cpu_bf16("flags\t\t: fpu sse4_2 avx2 amx_bf16 amx_tile\n") is True
    assert native_cpu_bf16("flags\t\t: fpu sse4_2 avx2 avx512f\n") is False
    line = describe_run(accelerator(1, "cpu", "bf16"), 32, 25)
    here = native_cpu_bf16()
    assert ("no native bf16" in line) == (here is False)
    assert "no native bf16" not in describe_run(accelerator(1, "cpu", "no"), 32, 25)


def spec_with(**train) -> spec_pb2.JobSpec:
    spec = spec_pb2.JobSpec(name="t")
    for k, v in train.items():
        setattr(spec.train, k, v)
    return spec


def test_few_steps_warning_says_how_many_and_what_to_change():
    w = few_steps_warning(spec_with(epochs=2, batch_size=16), total_steps=12, processes=2)
    assert w.startswith("only 12 optimizer steps in total (2 epochs x 6 steps of global batch 32)")
    assert "train.epochs: 9" in w and "smaller train.batch_size" in w and "processes" in w
    assert few_steps_warning(spec_with(epochs=5, batch_size=8), total_steps=50, processes=1) == ""
    # max_steps is an explicit step count: no second-guessing it.
    assert (
        few_steps_warning(spec_with(max_steps=10, batch_size=8), total_steps=10, processes=1) == ""
    )


def test_a_short_run_warns_in_its_events(bert_dir, text_csvs, text_spec, events, tmp_path):
    spec = text_spec(bert_dir, text_csvs)  # 24 rows, batch 4, 1 epoch: 6 steps
    run_job(spec, tmp_path, events)
    warnings = [e.log.message for e in events.kind("log") if e.log.level == "warning"]
    assert any(w.startswith("only 6 optimizer steps in total") for w in warnings), warnings
    precision = "bf16 mixed precision" if native_cpu_bf16() else "fp32"  # train.precision auto
    assert any(m.startswith(f"training on 1 CPU process, {precision}") for m in events.logs())


def test_csv_errors_name_the_file_line_counting_the_header_and_multiline_fields(
    tmp_path,
    tokenizer,  # noqa: F811
):
    train = tmp_path / "train.csv"
    # line 1 header; row 0 spans lines 2-3 (a quoted newline); line 4 blank; row 1 line 5;
    # row 2 (the typo) on line 6.
    train.write_text('text,label\n"the cat\nsat",pos\n\nbad plot,neg\ngood,pso\n')
    spec = make_spec(
        {"labels": ["neg", "pos"]}, source="csv", train=str(train), text_column="text",
        label_column="label",
    )  # fmt: skip
    with pytest.raises(InvalidJobInput) as e:
        load_data(spec, Task(kind="text", tokenizer=tokenizer))
    msg = str(e.value)
    assert msg.startswith(f"{train}: line 6, column 'label': label 'pso'"), msg
    table = read_table(str(train), "csv")
    assert table.describe(0) == "line 2" and table.describe(1) == "line 5"


def test_jsonl_errors_name_the_line_skipping_blank_lines(tmp_path, tokenizer):  # noqa: F811
    train = tmp_path / "train.jsonl"
    rows = [json.dumps(r) for r in TRAIN[:3]]
    train.write_text(rows[0] + "\n\n" + rows[1] + "\n" + json.dumps({"text": "x", "label": ""}))
    spec = make_spec(source="jsonl", train=str(train), text_column="text", label_column="label")
    with pytest.raises(
        InvalidJobInput, match=r"train.jsonl: line 4, column 'label': the label is empty"
    ):
        load_data(spec, Task(kind="text", tokenizer=tokenizer))
