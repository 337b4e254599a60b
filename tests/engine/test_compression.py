"""compress: pruning reaches its amount and leaves plain weights (structured: a smaller BERT
that reloads); recovery steps train around the pruned weights; int8 runs, agrees, reloads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.compression import REPORT_COLUMNS, compress
from tunefleet.worker.engine.int8 import load_int8, quantize_dynamic_int8
from tunefleet.worker.engine.pruning import prunable_weights


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.features(x))


def text_batch(n=16, length=12) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(5, 50, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "token_type_ids": torch.zeros(n, length, dtype=torch.long),
        "labels": torch.zeros(n, dtype=torch.long),
    }


def image_batch(n=16) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(n, 1, 16, 16, generator=g), "labels": torch.zeros(n)}


def logits(model, batch, kind):
    with torch.inference_mode():
        if kind == "image":
            return model(batch["pixel_values"])
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def agreement_evaluator(reference: torch.Tensor, batch: dict, kind: str):
    """Accuracy against the fp32 model's own predictions: 1.0 for the fp32 row."""
    target = reference.argmax(-1)

    def evaluate(model):
        out = logits(model, batch, kind)
        loss = nn.functional.cross_entropy(out, target).item()
        return {"accuracy": (out.argmax(-1) == target).float().mean().item(), "loss": loss}

    return evaluate


def make_spec(amount=0.5, scope="global", method="unstructured", quantize=True, recovery=0):
    spec = spec_pb2.CompressionSpec()
    if amount:
        spec.prune.amount, spec.prune.scope, spec.prune.method = amount, scope, method
        spec.prune.recovery_steps = recovery
    if quantize:
        spec.quantize.method = "dynamic_int8"
    return spec


def hf_export(model, folder: Path):
    model.save_pretrained(folder)


def cnn_export(model, folder: Path):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    (folder / "tunefleet_model.json").write_text(
        json.dumps({"kind": "torchvision", "arch": "tiny"})
    )


def sparsity(modules) -> float:
    total = sum(m.weight.numel() for m, _ in modules)
    return sum(int((m.weight == 0).sum()) for m, _ in modules) / total


def test_bert_global_prune_then_int8(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, batch = tiny_bert(), text_batch()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    reference = logits(model, batch, "text")
    result = compress(
        model, make_spec(0.5), kind="hf",
        evaluate=agreement_evaluator(reference, batch, "text"), example_batch=batch,
        out_dir=tmp_path, export=hf_export,
    )  # fmt: skip

    # the caller's model is untouched
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert set(result.artifacts) == {"model_pruned", "model_int8", "compression_report"}

    pruned = AutoModelForSequenceClassification.from_pretrained(result.artifacts["model_pruned"])
    assert not any("weight_orig" in k or "weight_mask" in k for k in pruned.state_dict())
    assert sparsity(prunable_weights(pruned)) == pytest.approx(0.5, abs=0.01)
    assert result.summary["pruned_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert pruned.bert.embeddings.word_embeddings.weight[1:].ne(0).all()  # row 0 is padding
    assert pruned.bert.embeddings.LayerNorm.weight.ne(0).all()

    # int8 reloads without pickle and matches a fresh quantization of the pruned model
    qmodel = load_int8(result.artifacts["model_int8"])
    expected = logits(quantize_dynamic_int8(pruned), batch, "text")
    assert torch.allclose(logits(qmodel, batch, "text"), expected, atol=1e-5)
    agree = (expected.argmax(-1) == logits(pruned, batch, "text").argmax(-1)).float().mean()
    assert agree >= 0.8

    report = result.report
    assert report.name == "compression" and list(report.columns) == REPORT_COLUMNS
    assert [r.cells[0] for r in report.rows] == ["fp32", "pruned", "pruned+int8"]
    assert all(len(r.cells) == len(REPORT_COLUMNS) for r in report.rows)
    assert report.rows[0].cells[5] == "1.0000"
    assert "pruned+int8" in report.text
    for key in ("fp32_accuracy", "pruned_accuracy", "int8_accuracy", "int8_speedup",
                "int8_size_ratio", "int8_latency_ms"):  # fmt: skip
        assert isinstance(result.summary[key], float)
    assert result.summary["fp32_accuracy"] == 1.0

    saved = json.loads(Path(result.artifacts["compression_report"]).read_text())
    assert [s["model"] for s in saved["stages"]] == ["fp32", "pruned", "pruned+int8"]
    rows = {s["model"]: s for s in saved["stages"]}
    assert rows["pruned"]["nonzero"] < rows["fp32"]["nonzero"] <= rows["fp32"]["params"]
    assert rows["pruned+int8"]["params"] == rows["fp32"]["params"]
    assert rows["pruned+int8"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert not list(tmp_path.glob(".*"))  # no temp folders or files left behind


def test_cnn_layer_scope_and_structured(tmp_path):
    batch = image_batch()
    for method, scope in (("unstructured", "layer"), ("structured", "global")):
        torch.manual_seed(0)
        model = TinyCNN().eval()
        reference = logits(model, batch, "image")
        out = tmp_path / method
        result = compress(
            model, make_spec(0.25, scope=scope, method=method), kind="torchvision",
            evaluate=agreement_evaluator(reference, batch, "image"), example_batch=batch,
            out_dir=out, export=cnn_export,
        )  # fmt: skip
        from safetensors.torch import load_file

        state = load_file(str(out / "model_pruned" / "model.safetensors"))
        assert not any(k.endswith(("_orig", "_mask")) for k in state)
        for name in ("features.0.weight", "features.4.weight", "head.0.weight", "head.2.weight"):
            w = state[name]
            if method == "unstructured":  # every layer alone reaches the amount
                assert (w == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
            else:  # whole output channels / neurons are zero
                zero_rows = (w.flatten(1) == 0).all(dim=1).sum().item()
                assert zero_rows == round(0.25 * w.shape[0])
        assert state["features.1.weight"].ne(0).all()  # BatchNorm untouched

        float_model = TinyCNN()
        float_model.load_state_dict(state)
        qmodel = load_int8(out / "model_int8", TinyCNN)
        got, want = logits(qmodel, batch, "image"), logits(float_model, batch, "image")
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8
        assert [r.cells[0] for r in result.report.rows] == ["fp32", "pruned", "pruned+int8"]


def test_quantize_only_and_prune_only(tmp_path):
    model, batch = tiny_bert(), text_batch(8)
    evaluate = agreement_evaluator(logits(model, batch, "text"), batch, "text")
    only_q = compress(
        model, make_spec(amount=0), kind="hf", evaluate=evaluate, example_batch=batch,
        out_dir=tmp_path / "q", export=hf_export,
    )  # fmt: skip
    assert [r.cells[0] for r in only_q.report.rows] == ["fp32", "int8"]
    assert "model_pruned" not in only_q.artifacts and "pruned_sparsity" not in only_q.summary
    assert only_q.summary["int8_accuracy"] >= 0.8

    only_p = compress(
        model, make_spec(0.3, quantize=False), kind="hf", evaluate=evaluate,
        example_batch=batch, out_dir=tmp_path / "p", export=hf_export,
    )  # fmt: skip
    assert [r.cells[0] for r in only_p.report.rows] == ["fp32", "pruned"]
    assert "model_int8" not in only_p.artifacts
    assert "not run" not in only_p.report.text


# ----------------------------------------------------------------------------- structured, recovery


def bert_with_tokenizer(folder: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunefleet.worker.engine.architectures import quiet_transformers

    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        return model, AutoTokenizer.from_pretrained(folder)


def engine_export(tokenizer):
    """The trainer's export: save_pretrained + tokenizer + tunefleet_model.json."""
    from tunefleet.worker.engine.export import export_model

    def export(model, folder: Path):
        export_model(
            model, folder, kind="hf", arch="bert", labels=["neg", "pos"],
            head={"init": "normal", "hidden": 0}, tokenizer=tokenizer,
        )  # fmt: skip

    return export


def test_structured_bert_loses_half_its_heads_and_neurons_and_reloads(tmp_path, bert_dir):
    from tunefleet.worker.engine import load_model
    from tunefleet.worker.engine.pruning import prune_model

    model, tokenizer = bert_with_tokenizer(bert_dir)  # conftest.make_bert, eval mode
    heads, neurons, hidden = 2, 37, 32  # make_bert's config
    head_dim = hidden // heads
    batch = text_batch(8, length=10)
    batch["input_ids"] %= len(tokenizer)
    reference = logits(model, batch, "text")
    spec = make_spec(0.5, method="structured")
    result = compress(
        model, spec, kind="hf", evaluate=agreement_evaluator(reference, batch, "text"),
        example_batch=batch, out_dir=tmp_path / "out", export=engine_export(tokenizer),
    )  # fmt: skip

    folder = Path(result.artifacts["model_pruned"])
    config = json.loads((folder / "config.json").read_text())
    drop_heads, drop_neurons = 1, round(0.5 * neurons)  # round(18.5) == 18, as torch rounds
    assert config["pruned_heads"].keys() == {"0", "1"}
    assert all(len(v) == drop_heads for v in config["pruned_heads"].values())
    assert config["intermediate_size"] == neurons - drop_neurons
    assert config["num_attention_heads"] == heads  # the original count; the rest is recorded

    # every layer loses 1 head (query/key/value rows + bias, output columns) and 18 neurons
    per_layer = 3 * drop_heads * head_dim * (hidden + 1) + hidden * drop_heads * head_dim
    per_layer += drop_neurons * (hidden + 1) + hidden * drop_neurons
    saved = json.loads(Path(result.artifacts["compression_report"]).read_text())
    rows = {s["model"]: s for s in saved["stages"]}
    assert rows["fp32"]["params"] - rows["pruned"]["params"] == 2 * per_layer
    zeros = {k: r["params"] - r["nonzero"] for k, r in rows.items()}  # zero-init biases
    assert zeros["pruned"] <= zeros["fp32"]  # removed, not zeroed
    assert rows["pruned"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert result.summary["pruned_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert "removed 1 of 2 attention heads and 18 of 37 FFN neurons" in result.report.text

    # the exported folder reloads (tunefleet's loader re-applies config.pruned_heads) and
    # computes what the pruned model in memory computes
    in_memory = copy.deepcopy(model)
    prune_model(in_memory, spec.prune)
    assert in_memory.bert.encoder.layer[0].attention.self.query.out_features == head_dim
    assert in_memory.bert.encoder.layer[1].intermediate.dense.out_features == 19
    reloaded = load_model(folder)
    assert sum(p.numel() for p in reloaded.parameters()) == rows["pruned"]["params"]
    assert torch.allclose(logits(reloaded, batch, "text"), logits(in_memory, batch, "text"),
                          atol=1e-5)  # fmt: skip

    # as a job's starting point it is refused, not silently re-initialised
    from tunefleet.worker.engine import InvalidJobInput, models

    with pytest.raises(InvalidJobInput, match="pruned_heads"):
        models._load_hf(str(folder), None)

    # the int8 model quantized from it reloads too (load_int8 rebuilds the narrow architecture)
    qmodel = load_int8(result.artifacts["model_int8"])
    expected = logits(quantize_dynamic_int8(in_memory), batch, "text")
    assert torch.allclose(logits(qmodel, batch, "text"), expected, atol=1e-5)


def test_recovery_trains_around_unstructured_zeros(tmp_path, bert_nodrop_dir, text_csvs, text_spec):
    from torch.utils.data import DataLoader

    from tunefleet.worker.engine import forward, models
    from tunefleet.worker.engine.data import load_data
    from tunefleet.worker.engine.evaluation import evaluate_module
    from tunefleet.worker.engine.recovery import Recovery

    job = text_spec(bert_nodrop_dir, text_csvs, optimizer={"name": "adamw", "lr": 1e-2})
    data = load_data(job, models.resolve_task(job))
    model, tokenizer = bert_with_tokenizer(bert_nodrop_dir)
    loader = DataLoader(data.eval, batch_size=4, collate_fn=data.collate)
    recover = Recovery(
        spec=job, train=data.train, collate=data.collate, kind="hf",
        forward=lambda m, b: forward.logits(m, b, "hf"), head_path="classifier",
    )  # fmt: skip

    def run(steps: int, out: Path):
        return compress(
            model, make_spec(0.5, recovery=steps, quantize=False), kind="hf",
            evaluate=lambda m: evaluate_module(m, loader, "hf", 2),
            example_batch=next(iter(loader)), out_dir=out, export=engine_export(tokenizer),
            keep=("classifier",), recover=recover,
        )  # fmt: skip

    plain, recovered = run(0, tmp_path / "plain"), run(5, tmp_path / "recovered")
    before = load_file(str(Path(plain.artifacts["model_pruned"]) / "model.safetensors"))
    after = load_file(str(Path(recovered.artifacts["model_pruned"]) / "model.safetensors"))
    names = [k for k in before if ".encoder." in k and k.endswith("dense.weight")]
    assert names
    for name in names:
        zeros = before[name] == 0
        assert zeros.float().mean() > 0.2  # global pruning hit this layer
        assert (after[name][zeros] == 0).all()  # still pruned
        assert (after[name][~zeros] != before[name][~zeros]).any()  # the rest trained
    assert not any(k.endswith(("_orig", "_mask")) for k in after)
    assert recovered.summary["pruned_sparsity"] == pytest.approx(plain.summary["pruned_sparsity"])

    row = recovered.report.rows[1]
    assert row.cells[0] == "pruned+5 recovery steps"
    assert row.cells[5] == f"{recovered.summary['pruned_accuracy']:.4f}"
    assert recovered.summary["pruned_recovery_steps"] == 5.0
    assert recovered.summary["pruned_accuracy_before_recovery"] == pytest.approx(
        plain.summary["pruned_accuracy"]
    )
    assert "5 recovery fine-tuning steps at lr 0.01" in recovered.report.text
    with pytest.raises(ValueError, match="recover"):
        compress(
            model, make_spec(0.5, recovery=2), kind="hf", evaluate=lambda m: {},
            example_batch=next(iter(loader)), out_dir=tmp_path / "none", export=hf_export,
        )  # fmt: skip


def test_run_job_structured_prune_with_recovery(tmp_path, bert_dir, text_csvs, text_spec, events):
    from tunefleet.worker.engine import load_model, run_job

    compression = {
        "prune": {"amount": 0.5, "method": "structured", "recovery_steps": 3},
        "quantize": {"method": "dynamic_int8"},
    }
    result = run_job(text_spec(bert_dir, text_csvs, compression=compression), tmp_path, events)
    report = next(e.report for e in events.kind("report") if e.report.name == "compression")
    assert [r.cells[0] for r in report.rows] == ["fp32", "pruned+3 recovery steps", "pruned+int8"]
    assert result.summary["pruned_recovery_steps"] == 3.0
    pruned = load_model(result.artifacts["model_pruned"])
    assert pruned.bert.encoder.layer[0].intermediate.dense.out_features == 19
    assert load_int8(result.artifacts["model_int8"]) is not None


def test_run_job_cnn_structured_recovery_keeps_channels_zeroed(
    tmp_path, smallcnn_checkpoint, image_spec, fake_images, events
):
    """A CNN keeps channel zeroing (no narrower model), and recovery keeps those channels zero."""
    from tunefleet.worker.engine import run_job

    compression = {"prune": {"amount": 0.25, "method": "structured", "recovery_steps": 2}}
    result = run_job(image_spec(smallcnn_checkpoint, compression=compression), tmp_path, events)
    state = load_file(str(Path(result.artifacts["model_pruned"]) / "model.safetensors"))
    convs = {k: w for k, w in state.items() if k.endswith("weight") and w.ndim == 4}
    assert convs
    for w in convs.values():
        assert (w.flatten(1) == 0).all(dim=1).sum().item() == round(0.25 * w.shape[0])
    report = next(e.report for e in events.kind("report") if e.report.name == "compression")
    assert [r.cells[0] for r in report.rows] == ["fp32", "pruned+2 recovery steps"]
    assert "held at zero" in report.text and "only BERT-style encoders" in report.text


def test_a_rerun_without_compression_leaves_no_variants_of_the_older_model(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """model_pruned/, model_int8/ and the report in a reused output folder belong to the run
    that wrote them: a later run (here the finished one again, compression removed, which
    resumes since compression does not shape training) must not leave them beside its model."""
    from tunefleet.worker.engine import run_job

    compression = {"prune": {"amount": 0.3}, "quantize": {"method": "dynamic_int8"}}
    spec = text_spec(bert_dir, text_csvs, train={"max_steps": 2}, compression=compression)
    first = run_job(spec, tmp_path, events)
    assert {"model_pruned", "model_int8", "compression_report"} <= first.artifacts.keys()
    spec = text_spec(
        bert_dir, text_csvs, train={"max_steps": 2}, compression={"prune": {"amount": 0.3}}
    )
    second = run_job(spec, tmp_path, events)
    assert "model_int8" not in second.artifacts and not (tmp_path / "model_int8").exists()
    assert Path(second.artifacts["model_pruned"]).is_dir()
    run_job(text_spec(bert_dir, text_csvs, train={"max_steps": 2}), tmp_path, events)
    left = {"model_pruned", "model_int8", "compression_report.json"} & set(
        p.name for p in tmp_path.iterdir()
    )
    assert not left


def test_temporary_folders_of_a_compression_that_was_killed_are_removed(tmp_path):
    """A process killed while compressing (lost lease, OOM killer) leaves its temporary
    folders, one of them a whole fp32 model; the next attempt's compression removes them."""
    model, batch = tiny_bert(), text_batch(8)
    evaluate = agreement_evaluator(logits(model, batch, "text"), batch, "text")
    stale = [".fp32-export-k1ll3d", ".model_pruned.tmp", ".model_pruned.tmp.tmp"]
    for name in [*stale, ".model_int8.tmp"]:
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "model.safetensors").write_bytes(b"0" * 1024)
    compress(
        model, make_spec(amount=0), kind="hf", evaluate=evaluate, example_batch=batch,
        out_dir=tmp_path, export=hf_export,
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compression_report.json", "model_int8"]
