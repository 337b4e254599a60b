"""Hugging Face datasets (``data.source: hf``): a split from the hub or a folder saved with
``save_to_disk``, (tables.py reads its columns)."""

from __future__ import annotations

import os

from tunefleet.worker.engine.errors import InvalidJobInput


def load_hf_split(spec, split: str, which: str = "train"):
    import datasets

    name, config = spec.data.name, spec.data.config or None
    where = f"hf dataset {name!r}" + (f" ({config})" if config else "") + f", split {split!r}"
    try:
        if os.path.isdir(name) and (
            os.path.isfile(os.path.join(name, "dataset_dict.json"))
            or os.path.isfile(os.path.join(name, "state.json"))
        ):
            obj = datasets.load_from_disk(name)
            if isinstance(obj, datasets.DatasetDict):
                if split not in obj:
                    raise InvalidJobInput(f"{where}: no such split; available: {', '.join(obj)}")
                obj = obj[split]
            elif which != "train":
                raise InvalidJobInput(
                    f"data.{which}: {name} holds a single split (saved from a Dataset, not a "
                    "DatasetDict); it can only be the train split"
                )
            return obj, where
        return datasets.load_dataset(name, config, split=split), where
    except InvalidJobInput:
        raise
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Not found / unknown split / bad config: the same spec fails the same way again.
        # Network errors are not caught: the worker may retry those.
        raise InvalidJobInput(f"{where}: {type(e).__name__}: {e}") from e
