"""`Task`: the model's input format, which the data pipeline reads.

models.resolve_task fills it in from the model (tokenizer, or image size and normalisation)
before the data is loaded; data.load_data prepares the datasets for it; the exported model
records it (`as_dict`) so that inference and chained jobs prepare inputs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Task:
    """What the model needs from the data."""

    kind: str  # "text" | "image"
    tokenizer: Any = None  # HF tokenizer for text
    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = 3
    # Text: the model's own token limit, what data.max_length 0 (its default) truncates at.
    max_length: int = 0

    @classmethod
    def text(cls, tokenizer: Any, max_length: int) -> Task:
        """A text task: no image fields (they are recorded as 0 / empty in the export)."""
        return cls(
            kind="text", tokenizer=tokenizer, image_size=0, mean=(), std=(), in_channels=0,
            max_length=max_length,
        )  # fmt: skip

    def truncation(self, max_length: int) -> int:
        """The tokens a text example keeps: data.max_length, or 0 (its default) for the
        model's own limit. The data pipeline cuts there and the exported tokenizer records
        it, so `truncation=True` at inference cuts where training and evaluation did."""
        return max_length if max_length > 0 else (self.max_length or 512)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, without the tokenizer (saved next to the model instead)."""
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "in_channels": self.in_channels,
        }
