"""Engine fixtures: a tiny BERT + tokenizer, tiny CSVs, a SmallCNN checkpoint, fake image data.

Everything is built offline into tmp folders, with random weights, in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine_helpers import FILLER, NEG, POS, make_csv  # noqa: F401 (make_csv: fixtures)


def make_bert(folder: Path, *, layers: int = 2, dropout: float = 0.1) -> Path:
    """A 32-wide BERT with random weights and a WordPiece tokenizer over a 31-word vocab."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from tunefleet.worker.engine.architectures import quiet_transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *POS, *NEG]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5: the positional vocab file is honoured; BertTokenizerFast(vocab_file=...)
    # silently builds an empty vocabulary.
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    with quiet_transformers():
        BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def bert_nodrop_dir(tmp_path_factory) -> Path:
    """No dropout: needed where runs must match across process counts."""
    return make_bert(tmp_path_factory.mktemp("bert-nodrop"), dropout=0.0)


@pytest.fixture(scope="session")
def text_csvs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("text")
    return make_csv(root / "train.csv", 24), make_csv(root / "eval.csv", 12, seed=1)


def build_text_spec(model_dir: Path, data: tuple[Path, Path], /, **sections: dict[str, Any]):
    """A resolved JobSpec for the tiny BERT; keyword sections update the defaults below."""
    from tunefleet.spec import prepare

    job: dict[str, Any] = {
        "name": "tiny",
        "model": {"source": "hf", "name": str(model_dir)},
        "data": {"source": "csv", "train": str(data[0]), "eval": str(data[1]), "max_length": 16},
        "optimizer": {"name": "adamw", "lr": 3e-3},
        "schedule": {"name": "linear"},
        "train": {"epochs": 1, "batch_size": 4, "log_every_steps": 1, "seed": 0},
    }
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return prepare(job)


# ----------------------------------------------------------------------------- images


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"pixel_values": self.images[i], "labels": int(self.labels[i])}


def collate_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([x["pixel_values"] for x in items]),
        "labels": torch.tensor([x["labels"] for x in items]),
    }


def fake_image_bundle(n_train: int = 32, n_eval: int = 16, size: int = 28, channels: int = 1):
    """Class 1 images are brighter: learnable in a few steps."""
    from tunefleet.worker.engine.data import DataBundle

    g = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorImages:
        labels = torch.arange(n) % 2
        images = (
            torch.randn(n, channels, size, size, generator=g) + labels.view(-1, 1, 1, 1).float()
        )
        return TensorImages(images, labels)

    return DataBundle(
        train=split(n_train),
        eval=split(n_eval),
        collate=collate_images,
        label_names=["dark", "bright"],
        num_labels=2,
    )


@pytest.fixture
def fake_images(monkeypatch):
    """Replace data loading with in-memory 28x28 grayscale images (2 classes)."""
    from tunefleet.worker.engine import data

    monkeypatch.setattr(data, "load_data", lambda spec, task: fake_image_bundle())


@pytest.fixture(scope="session")
def smallcnn_checkpoint(tmp_path_factory) -> Path:
    """A SmallCNN 'pretrained' checkpoint with non-trivial BatchNorm running statistics."""
    from safetensors.torch import save_model

    from tunefleet.worker.engine.architectures import SmallCNN

    torch.manual_seed(1)
    model = SmallCNN(num_classes=10, in_channels=1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(1000)
    path = tmp_path_factory.mktemp("smallcnn") / "pretrained.safetensors"
    save_model(model, str(path))
    return path


def build_image_spec(checkpoint: Path, /, **sections: dict[str, Any]):
    from tunefleet.spec import prepare

    job: dict[str, Any] = {
        "name": "tiny-images",
        "model": {"source": "torchvision", "name": "smallcnn", "checkpoint": str(checkpoint)},
        "data": {"source": "torchvision", "name": "FashionMNIST", "root": str(checkpoint.parent)},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 8, "log_every_steps": 1},
    }
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return prepare(job, check_paths=False)


@pytest.fixture(scope="session")
def text_spec():
    """build_text_spec(model_dir, (train_csv, eval_csv), **sections) -> resolved JobSpec."""
    return build_text_spec


@pytest.fixture(scope="session")
def image_spec():
    """build_image_spec(smallcnn_checkpoint, **sections) -> resolved JobSpec."""
    return build_image_spec


class EventLog(list):
    """An `emit` that keeps events; helpers pick out kinds."""

    def __call__(self, event) -> None:
        self.append(event)

    def kind(self, name: str) -> list:
        return [e for e in self if e.WhichOneof("kind") == name]

    def train_losses(self) -> dict[int, float]:
        return {
            e.metrics.step: e.metrics.loss
            for e in self.kind("metrics")
            if e.metrics.phase == "train"
        }

    def logs(self) -> list[str]:
        return [e.log.message for e in self.kind("log")]


@pytest.fixture
def events() -> EventLog:
    return EventLog()
