"""The engine's exceptions.

The worker maps them onto job outcomes: `InvalidJobInput` means the job itself is wrong (bad
data, a missing column, ``finetune.k`` larger than the model) and retrying cannot help, so the
child process exits with code 2 and the job fails without a restart. Anything else is a crash
and may be retried.
"""


class EngineError(Exception):
    """Root of the engine's exceptions."""


class InvalidJobInput(EngineError):
    """A deterministic problem with the job's inputs; the message names the file/field/row."""
