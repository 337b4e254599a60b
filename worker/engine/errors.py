"""The engine's exceptions.

The worker maps them onto job outcomes: `InvalidJobInput` means the job itself is wrong (bad
data, a missing column, ``finetune.k`` larger than the model) and retrying cannot help, so the
child process exits with code 2 and the job fails without a restart. A full disk (ENOSPC,
EDQUOT) exits with EXIT_NO_SPACE: the worker decides whether that is the job's storage (the job
fails once, with the reason) or its own artifacts disk (the job is released to another worker).
Anything else is a crash and may be retried.
"""

import errno

EXIT_INVALID_INPUT = 2
EXIT_NO_SPACE = 74  # EX_IOERR: the disk the job writes to is full
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) says the disk or the user's quota is full. Not
    only OSError: safetensors raises its own error ("No space left on device (os error
    28)") and torch.save a RuntimeError ("file write failed")."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text or "quota exceeded" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class EngineError(Exception):
    """Root of the engine's exceptions."""


class InvalidJobInput(EngineError):
    """A deterministic problem with the job's inputs; the message names the file/field/row."""


class Diverged(InvalidJobInput):
    """The loss or an eval metric stayed NaN/inf: training further cannot recover, and
    running the job again from its checkpoints would diverge the same way."""
