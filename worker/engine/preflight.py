"""Checks the engine makes once the model is loaded, before training starts: problems that
would otherwise crash deep inside torch (and be retried as crashes) become one clear
InvalidJobInput that names the field to change."""

from __future__ import annotations

from torch import nn

from tunefleet.spec.model_config import positions_from_config
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput


def check_positions(spec: spec_pb2.JobSpec, model: nn.Module) -> None:
    """data.max_length must fit the model's position embeddings (else: an IndexError in
    the embeddings on the first long batch, 88 lines of traceback, four attempts)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or spec.model.source == "torchvision":
        return
    positions = positions_from_config(config.to_dict())
    max_length = spec.data.max_length
    if positions is not None and max_length > positions:
        raise InvalidJobInput(
            f"data.max_length: {max_length} is more than the {positions} positions the model "
            f"has; use at most {positions}"
        )
