"""The one error type for bad job specs: every problem, each with its field path."""

from __future__ import annotations

from dataclasses import dataclass

from tunefleet.limits import clip_chars

# A problem's path and message quote what the user wrote; a 1 MB key or value must not
# make a 1 MB error (or a 312 MB one, repeated).
_MAX_PATH_CHARS = 200
_MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class FieldError:
    """One problem with a job spec; `path` is dotted (`train.epochs`, `optimizer.betas[1]`)."""

    path: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", clip_chars(self.path, _MAX_PATH_CHARS))
        object.__setattr__(self, "message", clip_chars(self.message, _MAX_MESSAGE_CHARS))

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
