"""Text datasets: tokenised once, up front, in batches (fast tokenizers run that in Rust), and
stored as one flat int32 array per field plus offsets; the collate pads each batch to its own
longest example (dynamic padding), which is what `DataCollatorWithPadding` does, without the
per-example Python dicts."""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch
from torch.utils.data import Dataset

from tunefleet.worker.engine import splits
from tunefleet.worker.engine.data.bundle import DataBundle
from tunefleet.worker.engine.data.labels import build_label_space
from tunefleet.worker.engine.data.tables import read_split
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.task import Task

_TOKENIZE_CHUNK = 8192


class TokenizedTextDataset(Dataset):
    """Pre-tokenised examples stored flat: field arrays sliced by `offsets`."""

    def __init__(self, fields: dict[str, np.ndarray], offsets: np.ndarray, labels: np.ndarray):
        self.fields = fields
        self.offsets = offsets
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        s, e = self.offsets[i], self.offsets[i + 1]
        item = {k: v[s:e] for k, v in self.fields.items()}
        item["labels"] = int(self.labels[i])
        return item

    @property
    def lengths(self) -> np.ndarray:  # tokens per example, e.g. for length-grouped batches
        return np.diff(self.offsets)


class TextCollator:
    """Pads a batch to its longest example, the way the tokenizer's own `pad` would."""

    def __init__(self, pad_token_id: int, pad_token_type_id: int = 0, padding_side="right"):
        self.pad_values = {"input_ids": pad_token_id, "token_type_ids": pad_token_type_id}
        self.left = padding_side == "left"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        n = len(examples)
        lengths = [len(ex["input_ids"]) for ex in examples]
        width = max(lengths)
        keys = [k for k in examples[0] if k != "labels"]
        out = {k: np.full((n, width), self.pad_values.get(k, 0), dtype=np.int64) for k in keys}
        mask = np.zeros((n, width), dtype=np.int64)
        for i, (ex, length) in enumerate(zip(examples, lengths, strict=True)):
            span = slice(width - length, width) if self.left else slice(0, length)
            for k in keys:
                out[k][i, span] = ex[k]
            mask[i, span] = 1
        batch = {k: torch.from_numpy(v) for k, v in out.items()}
        batch["attention_mask"] = torch.from_numpy(mask)
        batch["labels"] = torch.tensor([ex["labels"] for ex in examples], dtype=torch.long)
        return batch


def _check_text(values: list, table, column: str, field_name: str) -> None:
    """A JSON object or list in a text column (a nested JSON-lines field, an HF sequence) is
    refused: its repr would be tokenised as if it were the text. Numbers and empty values
    are read as text."""
    for i, v in enumerate(values):
        if isinstance(v, (dict, list, tuple, np.ndarray)):
            kind = "an object" if isinstance(v, dict) else "a list"
            raise InvalidJobInput(
                f"{table.where}: {table.describe(i)}, column {column!r} ({field_name}): "
                f"the value is {kind}, not text; a text column holds strings"
            )


def _as_text(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return v if isinstance(v, str) else str(v)


def _tokenize(tokenizer, texts: list, pairs: list | None, max_length: int):
    want_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    fields: dict[str, list[np.ndarray]] = {"input_ids": []}
    if want_types:
        fields["token_type_ids"] = []
    lengths: list[np.ndarray] = []
    for s in range(0, len(texts), _TOKENIZE_CHUNK):
        a = [_as_text(t) for t in texts[s : s + _TOKENIZE_CHUNK]]
        b = [_as_text(t) for t in pairs[s : s + _TOKENIZE_CHUNK]] if pairs is not None else None
        enc = tokenizer(
            a, b, truncation=True, max_length=max_length, padding=False,
            return_attention_mask=False, return_token_type_ids=want_types,
        )  # fmt: skip
        ids = enc["input_ids"]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        lengths.append(lens)
        total = int(lens.sum())
        for k in fields:
            dtype = np.int32 if k == "input_ids" else np.int8
            fields[k].append(np.fromiter(chain.from_iterable(enc[k]), dtype=dtype, count=total))
    lens = np.concatenate(lengths)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return {k: np.concatenate(v) for k, v in fields.items()}, offsets


def load_text(spec, task: Task) -> DataBundle:
    d = spec.data
    text_col, pair_col, label_col = d.text_column or "text", d.text_pair_column, d.label_column
    label_col = label_col or "label"
    tables = {"train": read_split(spec, "train")}
    if d.eval:
        tables["eval"] = read_split(spec, "eval")
    if splits.test_source(d):
        tables["test"] = read_split(spec, "test")

    raw: dict[str, dict[str, list]] = {}
    for name, table in tables.items():
        raw[name] = {
            "text": table.column(text_col, "data.text_column"),
            "label": table.column(label_col, "data.label_column"),
        }
        _check_text(raw[name]["text"], table, text_col, "data.text_column")
        if pair_col:
            raw[name]["pair"] = table.column(pair_col, "data.text_pair_column")
            _check_text(raw[name]["pair"], table, pair_col, "data.text_pair_column")

    train = tables["train"]
    space = build_label_space(
        raw["train"]["label"], spec=spec, where=train.where, column=label_col,
        class_names=train.class_names.get(label_col), describe=train.describe,
    )  # fmt: skip
    ids = {
        name: space.encode(
            raw[name]["label"], where=table.where, column=label_col, describe=table.describe
        )
        for name, table in tables.items()
    }
    names, size, parts = splits.select(space.names, space.size, spec, ids)

    # 0 (the default): the model's own limit (models.text_limit).
    max_length = task.truncation(d.max_length)

    def build(role: str) -> TokenizedTextDataset | None:
        if role not in parts:
            return None
        part = parts[role]
        cols = raw[part.table]
        texts = [cols["text"][i] for i in part.rows]
        pairs = [cols["pair"][i] for i in part.rows] if pair_col else None
        fields, offsets = _tokenize(task.tokenizer, texts, pairs, max_length)
        return TokenizedTextDataset(fields, offsets, part.ids)

    tok = task.tokenizer
    pad_id = tok.pad_token_id
    if pad_id is None:
        # GPT-style tokenizers have no pad token; any id works under a zero attention mask.
        pad_id = tok.eos_token_id if tok.eos_token_id is not None else 0
    collate = TextCollator(
        pad_token_id=pad_id,
        pad_token_type_id=getattr(tok, "pad_token_type_id", 0) or 0,
        padding_side=getattr(tok, "padding_side", "right"),
    )
    return DataBundle(
        train=build("train"),
        eval=build("eval"),
        collate=collate,
        label_names=names,
        num_labels=size,
        test=build("test"),
        notes=[splits.describe(d, parts, {k: t.where for k, t in tables.items()})],
    )
