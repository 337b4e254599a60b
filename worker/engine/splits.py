"""The three roles of a job's data: train, validation, test.

- **validation** picks the best checkpoint, drives early stopping and is what
  `eval.every_steps` evaluates: `data.eval` when given, else carved from train
  (`data.validation_fraction`, stratified by class, drawn with `data.validation_seed`);
- **test** is evaluated once, on the exported model, after training, and reported apart;
  nothing is chosen on it, so its figures are an honest estimate.

Why carve rather than reuse the test split: a checkpoint chosen on the test split (and an
early stop decided on it) is tuned to it, so the accuracy reported there is optimistic.

The carve is a pure function of (labels, fraction, seed): a restarted or repeated job gets
the same split, and the training seed does not move it, so runs over several seeds share
one validation set. It happens after `data.classes` and before the `limit_*` fields, so
`limit_train: 500` takes 500 of the examples left for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunefleet.spec.defaults import default_test, default_validation_fraction
from tunefleet.worker.engine.errors import InvalidJobInput


@dataclass
class Part:
    """One role's examples: `rows` index the table named `table`; `ids` are their labels."""

    table: str  # "train" | "eval" | "test": which split's rows these are
    rows: np.ndarray
    ids: np.ndarray


def select(
    names: list[str], size: int, spec, ids: dict[str, np.ndarray]
) -> tuple[list[str], int, dict[str, Part]]:
    """From the label ids of each split read (`train`, maybe `eval`, `test`): apply
    data.classes, carve validation from train if asked (`assign`), apply the limits; return
    the class names, their number and each role's rows with their new ids."""
    d, m = spec.data, spec.model
    names = list(names)
    parts = {k: Part(k, np.arange(len(v)), v) for k, v in ids.items()}
    if d.classes:
        classes = list(d.classes)
        bad = [c for c in classes if not 0 <= c < size]
        if bad:
            raise InvalidJobInput(
                f"data.classes: class id(s) {bad} out of range; the data has {size} classes "
                f"(0..{size - 1})"
            )
        if len(set(classes)) != len(classes):
            raise InvalidJobInput(f"data.classes: {classes} lists a class twice")
        remap = np.full(size, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        names = list(m.labels) if m.labels else [names[c] for c in classes]
        if len(names) != len(classes):
            raise InvalidJobInput(
                f"model.labels: {len(names)} names for the {len(classes)} classes in data.classes"
            )
        size = len(classes)
        for k, p in parts.items():
            new_ids = remap[p.ids]
            rows = np.flatnonzero(new_ids >= 0)
            parts[k] = Part(k, rows, new_ids[rows])
    if m.HasField("num_labels") and m.num_labels > 0:
        if m.num_labels < size:
            raise InvalidJobInput(
                f"model.num_labels: {m.num_labels} is smaller than the {size} classes in the data"
            )
        names += [str(i) for i in range(size, m.num_labels)]
        size = m.num_labels
    if len(parts["train"].rows) == 0:
        raise InvalidJobInput(
            f"data.classes: no training example has one of the classes {list(d.classes)}"
        )
    n_train = len(parts["train"].rows)
    parts = assign(d, parts)
    for role, what in (("eval", "eval"), ("test", "test")):
        if role in parts and len(parts[role].rows) == 0:
            if parts[role].table == "train":
                raise InvalidJobInput(
                    f"data.validation_fraction: {validation_fraction(d):g} of "
                    f"{n_train} training example(s) carves none out; give data.eval or more data"
                )
            raise InvalidJobInput(
                f"data.classes: no {what} example has one of the classes {list(d.classes)}"
            )
    return names, size, parts


def carve_validation(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, carved): positions into `labels`, both ascending, carved ~ fraction of each class.

    Per class, ``fraction * count`` examples go to validation, rounded so the total is
    ``round(fraction * n)`` (largest remainders first, ties to the lower class id), and
    never a class's last example: every class keeps one to train on. Which examples of a
    class go is a seeded permutation of that class's positions.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0 or fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    total = max(int(round(fraction * n)), 1)
    quota = counts * total / n  # sums to total
    take = np.floor(quota).astype(np.int64)
    short = total - int(take.sum())
    if short > 0:
        order = np.lexsort((classes, -(quota - take)))  # largest remainder, then class id
        take[order[:short]] += 1
    take = np.minimum(take, counts - 1)
    rng = np.random.default_rng(seed)
    carved = []
    for c, k in zip(classes, take, strict=True):
        where = np.flatnonzero(labels == c)
        perm = rng.permutation(len(where))  # drawn for every class, so one class's count
        carved.append(where[perm[:k]])  # does not shift another's draw
    carved_rows = np.sort(np.concatenate(carved)) if carved else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(n), carved_rows, assume_unique=True)
    return kept, carved_rows


def validation_fraction(d) -> float:
    """data.validation_fraction, or its default when the spec was not resolved."""
    return (
        d.validation_fraction
        if d.HasField("validation_fraction")
        else default_validation_fraction(d)
    )


def test_source(d) -> str:
    """data.test, or its default; "" when the job has no test set."""
    test = d.test or default_test(d)
    return "" if test == "none" else test


def assign(d, parts: dict[str, Part]) -> dict[str, Part]:
    """The roles from the splits read (`train`, maybe `eval`, maybe `test`): carve validation
    from train when asked, then apply limit_train / limit_eval / limit_test."""
    out = dict(parts)
    fraction = validation_fraction(d)
    if "eval" not in out and fraction > 0:
        train = out["train"]
        seed = d.validation_seed if d.HasField("validation_seed") else 0
        kept, carved = carve_validation(train.ids, fraction, seed)
        out["train"] = Part("train", train.rows[kept], train.ids[kept])
        out["eval"] = Part("train", train.rows[carved], train.ids[carved])
    for role, field in (("train", "limit_train"), ("eval", "limit_eval"), ("test", "limit_test")):
        limit = getattr(d, field)
        if role in out and limit > 0:
            p = out[role]
            out[role] = Part(p.table, p.rows[:limit], p.ids[:limit])
    return out


def describe(d, parts: dict[str, Part], where: dict[str, str]) -> str:
    """One line for the job's log: where validation and test come from, and their sizes."""
    val = parts.get("eval")
    if val is None:
        line = "validation: none (no data.eval): the last model is exported"
    elif val.table == "train":
        seed = d.validation_seed if d.HasField("validation_seed") else 0
        line = (
            f"validation: {len(val.rows):,} examples carved from train "
            f"({validation_fraction(d):g}, stratified, seed {seed})"
        )
    else:
        line = f"validation: {len(val.rows):,} examples ({where.get('eval', d.eval)})"
        if d.source == "torchvision" and d.eval == "test":
            line += " -- the test split: the best checkpoint's figures there are optimistic"
    test = parts.get("test")
    if test is None:
        line += "; test: none"
    else:
        line += (
            f"; test: {len(test.rows):,} examples ({where.get('test', d.test)}), "
            "evaluated once on the exported model"
        )
    return line
