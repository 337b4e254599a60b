"""Tiny real models, data and job files for tests, built offline in tmp folders."""

from __future__ import annotations

import csv
import random
from pathlib import Path

WORDS = {
    "pos": ["good", "great", "fine", "happy", "love", "nice", "best", "fun"],
    "neg": ["bad", "awful", "poor", "sad", "hate", "ugly", "worst", "dull"],
}
FILLER = ["the", "movie", "was", "really", "very", "a", "plot", "and", "it", "so"]


def make_tiny_bert(folder: Path, *, layers: int = 2) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a real WordPiece tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *WORDS["pos"], *WORDS["neg"]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def make_sentiment_csv(path: Path, n: int, seed: int = 0) -> Path:
    """Separable two-class text: each row carries words of its class among filler."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            words = rng.sample(FILLER, 4) + rng.sample(WORDS[label], 2)
            rng.shuffle(words)
            w.writerow([" ".join(words), label])
    return path


def write_text_job(folder: Path, model: Path, data: tuple[Path, Path], **overrides) -> Path:
    """A complete job YAML for the tiny model; `overrides` replace top-level sections."""
    import yaml

    job = {
        "name": "tiny-sentiment",
        "model": {"source": "hf", "name": str(model)},
        "data": {"source": "csv", "train": str(data[0]), "eval": str(data[1]), "max_length": 16},
        "finetune": {"strategy": "full"},
        "optimizer": {"name": "adamw", "lr": 5e-3},
        "schedule": {"name": "linear", "warmup_steps": 2},
        "train": {"epochs": 2, "batch_size": 16, "precision": "no", "log_every_steps": 2},
        "resources": {"gpus": 0},
    }
    job.update(overrides)
    path = folder / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path
