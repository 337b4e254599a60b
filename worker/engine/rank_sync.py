"""What the other processes of a run get from the main process, over the process group
instead of the job's folder.

Only the global main process reads and writes the job's folder (checkpoints, best weights,
result.json). The machines of a multi-node job need not share a file system: each worker
gives its member a folder on its own disk, so a file the main process wrote is not there
for a rank on another machine. So a checkpoint's per-rank RNG states are gathered to the
main process, which writes them all, and on resume the main process alone reads the
checkpoint and sends each rank what it needs (weights, optimizer and scheduler state,
trainer state, its RNG). The same happens on one machine: one code path, whatever the
storage. A single process talks to no one.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def from_main(accelerator, value: T) -> T:
    """The main process's `value` on every process (what the others pass is ignored).
    Pickled: for small things and, on the rare resume, optimizer state."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(accelerator, value: Any) -> list[Any]:
    """Every process's `value`, in process-index order, on every process."""
    if accelerator.num_processes == 1:
        return [value]
    values: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(values, value)
    return values


def weights_from_main(accelerator, module: nn.Module) -> None:
    """Every process's `module` takes the main process's parameters and buffers, in place
    (the tensors DDP wraps, so the prepared model sees them too)."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():  # what a checkpoint holds
            if tensor.is_contiguous():
                torch.distributed.broadcast(tensor, src=0)
            else:  # the collectives take contiguous tensors only
                dense = tensor.contiguous()
                torch.distributed.broadcast(dense, src=0)
                tensor.copy_(dense)
