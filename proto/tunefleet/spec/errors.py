"""The one error type for bad job specs: every problem, each with its field path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with a job spec; `path` is dotted (`train.epochs`, `optimizer.betas[1]`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """Raised with *all* problems at once so users fix a spec in one round trip."""

    def __init__(self, errors: list[FieldError], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"- {e}" for e in self.errors)
        super().__init__(f"invalid job spec{where}:\n{lines}")
