"""How many token positions a Hugging Face model has, from its config without torch.

`data.max_length` beyond that fails deep inside the model's embeddings (an index error, 88
lines of traceback, retried as a crash), so the validator checks it wherever the config is
readable (a local model folder) and the engine checks it on every model it loads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Models whose position ids start after the padding index: RoBERTa-style embeddings
# reserve the first `pad_token_id + 1` positions (514 in the config, 512 usable).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart"}
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len")


def positions_from_config(config: Mapping[str, Any]) -> int | None:
    """Usable positions of a model with this config.json content; None when unknown (or
    the model has no learned limit, e.g. relative positions)."""
    for key in _POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if config.get("model_type") in _OFFSET_POSITIONS:
                pad = config.get("pad_token_id")
                value -= (pad if isinstance(pad, int) else 1) + 1
            return value
    return None


def read_config(folder: str | Path) -> dict[str, Any]:
    """The config.json of a local model folder; {} when there is none or it is unreadable."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def max_positions(name: str) -> int | None:
    """Usable positions of the model in local folder `name`; None when not readable."""
    return positions_from_config(read_config(name))
