"""The finished model folder in the tools users already have: transformers' Auto classes and
`pipeline`, giving the figures the job reported."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
from engine_helpers import FILLER, NEG, POS

from tunefleet.worker.engine import run_job


def _long_csv(path: Path, n: int, seed: int) -> Path:
    """Rows of 70 to 150 words: past the tiny BERT's 64 positions."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            words = [rng.choice(FILLER) for _ in range(rng.randint(70, 150))]
            words[rng.randrange(len(words))] = rng.choice(POS if label == "pos" else NEG)
            w.writerow([" ".join(words), label])
    return path


def test_default_max_length_export_truncates_long_texts_at_the_models_limit(
    tmp_path, bert_dir, text_spec, events
):
    """data.max_length unset and a tokenizer without a limit of its own (model_max_length is
    transformers' huge sentinel): the job cut examples at the model's 64 positions, so the
    exported tokenizer must too. It saved the sentinel, and `pipeline(...)` or
    `tokenizer(text, truncation=True)` + the model crashed on any text past 64 tokens."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    data = (_long_csv(tmp_path / "train.csv", 8, 0), _long_csv(tmp_path / "eval.csv", 6, 1))
    # fp32: the reloaded model's logits are compared with the engine's to 1e-5.
    spec = text_spec(
        bert_dir, data, data={"max_length": 0}, train={"max_steps": 2, "precision": "no"}
    )
    run_job(spec, tmp_path / "out", events)
    folder = tmp_path / "out" / "model"

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 64
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    rows = list(csv.DictReader(data[1].open()))
    batch = tokenizer([r["text"] for r in rows], truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    targets = torch.tensor([model.config.label2id[r["label"]] for r in rows])
    summary = json.loads((tmp_path / "out" / "result.json").read_text())["summary"]
    loss = torch.nn.functional.cross_entropy(logits, targets).item()
    assert abs(loss - summary["eval_loss"]) < 1e-5

    classify = pipeline("text-classification", model=str(folder))
    predicted = classify([r["text"] for r in rows], truncation=True)
    assert {p["label"] for p in predicted} <= {"neg", "pos"}


def test_a_head_transformers_cannot_rebuild_says_how_to_load_it(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """head.hidden: from_pretrained loads the body, reports the head's weights unexpected
    and draws a random Linear in its place (a model that predicts noise). The job says so
    and names the loader that rebuilds the head; a plain head gets no such warning."""
    from transformers import AutoModelForSequenceClassification

    from tunefleet.worker.engine import load_model

    def warnings() -> list[str]:
        return [e.log.message for e in events.kind("log") if e.log.level == "warning"]

    spec = text_spec(bert_dir, text_csvs, model={"head": {"hidden": 8}}, train={"max_steps": 2})
    run_job(spec, tmp_path / "hidden", events)
    folder = tmp_path / "hidden" / "model"
    _, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert "classifier.weight" in info["missing_keys"]  # what the warning is about
    assert load_model(folder).classifier[0].out_features == 8
    assert [w for w in warnings() if "tunefleet.worker.engine.load_model" in w] == [
        "model/: its head (classifier, a hidden layer of 8) is not the single Linear that "
        "transformers builds: AutoModelForSequenceClassification.from_pretrained and "
        "pipeline() would put a random one in its place; load the folder with "
        "tunefleet.worker.engine.load_model"
    ]

    events.clear()
    run_job(text_spec(bert_dir, text_csvs, train={"max_steps": 2}), tmp_path / "plain", events)
    assert not [w for w in warnings() if "load_model" in w]
