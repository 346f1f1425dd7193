"""A process group of its own between the trainer and a vLLM server's workers, for weight sync without the disk.

The group lives beside whatever process groups either side already has (the trainer's accelerate group, vLLM's
tensor-parallel group): it is built from a ``TCPStore`` and a backend object directly, never through
``torch.distributed.init_process_group``, so it registers nothing global. Ranks: the server's workers are
``0 .. W-1`` (worker 0 hosts the store, on the server's host), the trainer is ``W``, the last; the trainer is the
only sender, every worker receives every tensor (each loads its own tensor-parallel shard from the full tensor).

Backends: ``nccl`` on GPUs (tensors on each side's device), ``gloo`` on CPU (the tests). Only ``torch`` is
imported, so the same module runs inside the vLLM worker (``weight_receiver.py``) and in the trainer, which needs
no vLLM.

Cost per sync: every backbone tensor once, in the server's dtype, at the link's bandwidth, with no file written or
read: 15.5 GB for the 7B in bf16 (7,730,240,000 parameters: decoder layers, embeddings and LM head; computed from
the memory plan's counts, ``bench/memory_plan.py``, not measured).
"""

from __future__ import annotations

from datetime import timedelta

import torch
from torch._C._distributed_c10d import BroadcastOptions

BACKENDS = ("gloo", "nccl")


class WeightChannel:
    """One rank of the trainer-to-server weight group (see the module docstring)."""

    def __init__(
        self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 600.0
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"weight channel backend {backend!r}: expected one of {BACKENDS}")
        self.rank, self.world_size, self.backend = rank, world_size, backend
        timeout = timedelta(seconds=timeout_s)
        # worker 0 hosts the store; the others, and the trainer, connect to it (retrying until it is up)
        self.store = torch.distributed.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        if backend == "gloo":
            self.group = torch.distributed.ProcessGroupGloo(self.store, rank, world_size, timeout)
        else:
            options = torch.distributed.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = torch.distributed.ProcessGroupNCCL(self.store, rank, world_size, options)

    @property
    def sender(self) -> int:
        """The trainer's rank: the last."""
        return self.world_size - 1

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Send ``tensor`` (trainer) or receive into it (workers), in place."""
        options = BroadcastOptions()
        options.rootRank = self.sender
        options.rootTensor = 0
        self.group.broadcast([tensor], options).wait()

    def close(self) -> None:
        """Drop the group and the store connection (the group's sockets close with them)."""
        self.group = None
        self.store = None


def device_for(backend: str) -> torch.device:
    """Where the channel's tensors live: the current CUDA device for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


__all__ = ["BACKENDS", "WeightChannel", "device_for"]
