"""Process-group helpers for runs started with ``accelerate launch`` (one process per GPU, or gloo on CPU).

The run directory has one writer: process 0 decides fresh-or-resume, prepares the data and the starting point,
and writes every file; the other processes receive its decisions as Python objects (``share_from_main``) so that
no two processes can decide differently, and its weights after a cold start (``broadcast_parameters``).

Every helper is a no-op pass-through in a single process, so the same code path serves both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class MainProcessError(RuntimeError):
    """Raised on the other processes when process 0 failed while preparing something they wait for."""


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def share_from_main(compute: Callable[[], T]) -> T:
    """Run ``compute`` on process 0 only and hand its result to every process.

    If it raises, process 0 re-raises the error and every other process raises ``MainProcessError`` with the same
    message, instead of waiting forever for a result that will not come.
    """
    if world_size() == 1:
        return compute()
    box: list[tuple[str, Any] | None] = [None]
    error: BaseException | None = None
    if rank() == 0:
        try:
            box[0] = ("ok", compute())
        except BaseException as err:  # re-raised below, after the others are told
            error = err
            box[0] = ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0)  # pickled: meant for small objects (decisions, rows, paths)
    outcome = box[0]
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise MainProcessError(f"process 0 failed: {outcome[1]}")
    return outcome[1]


class PeerProcessError(RuntimeError):
    """Raised on the processes whose own part succeeded when another process's part of a shared action failed."""


def fail_together(action: Callable[[], None]) -> None:
    """Run ``action`` on every process; when it raises on any process, every process raises.

    A process whose own part failed re-raises its error; the others raise ``PeerProcessError`` naming the first
    process that failed and its error. Without this, a write that fails on one process (a full disk while it renames
    a checkpoint into place) ends that process while the others wait at the next collective until the process
    group's timeout (30 minutes by default).
    """
    if world_size() == 1:
        action()
        return
    error: BaseException | None = None
    try:
        action()
    except BaseException as err:  # re-raised below, after the others are told
        error = err
    outcomes: list[str | None] = [None] * world_size()
    dist.all_gather_object(outcomes, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(index, text) for index, text in enumerate(outcomes) if text is not None]
    if failed:
        index, text = failed[0]
        raise PeerProcessError(f"process {index} failed: {text}")


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy process 0's parameters and buffers into every process's model (after a cold start on process 0).

    Tensors go one by one (bounded extra memory); on NCCL each is staged through the process's current device.
    """
    if world_size() == 1:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            staged = tensor.data if device is None or tensor.device == device else tensor.data.to(device)
            dist.broadcast(staged, src=0)
            if staged is not tensor.data:
                tensor.data.copy_(staged)


class LaunchError(RuntimeError):
    """The launch asked for something this machine cannot give (a clear one-line message, not a silent fallback)."""


def check_sharding_backend(has_gpu: bool) -> None:
    """Refuse a launch that asks for FSDP or DeepSpeed where accelerate would silently give neither.

    ``accelerate launch`` with an FSDP or DeepSpeed config sets ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``;
    accelerate 1.x enables those backends only on GPUs (and other accelerators) and on CPU trains unsharded (DDP
    over gloo) without a word, which would make any memory figure of the run meaningless.
    """
    for variable, wanted in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true" and not has_gpu:
            raise LaunchError(
                f"the launch asks for {wanted} ({variable}=true), which accelerate runs only on GPUs, and no GPU is "
                "visible; on CPU launch with configs/accelerate/ddp.yaml (DDP over gloo)"
            )


@contextmanager
def root_parameters_unsharded(model: torch.nn.Module):
    """Make an FSDP2 model's root parameters whole for calls made outside its ``forward``.

    FSDP2 (``fully_shard``) keeps every parameter as a sharded DTensor between forwards and gathers a module's
    parameters in that module's forward hook. The audio path calls the model outside ``forward``: the featurizer
    runs the encoder and adapter (``encode_segments``) and the rollout engines embed the prompt
    (``prompt_embeddings``); those weights (embeddings, encoder, adapter, LM head) belong to the root shard unit, so
    the root is unsharded around such calls. Decoder layers keep gathering themselves in their own hooks. Any other
    model: a no-op.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def leave_process_group() -> None:
    """End a multi-process command that finished on every process: accelerate's barrier, then its
    ``destroy_process_group``.

    PyTorch asks every process to destroy its process group before it exits (``torch.distributed`` docs,
    "Shutdown"). Left to interpreter exit, NCCL's group warns from every rank ("process group has NOT been destroyed
    before we destruct ProcessGroupNCCL", PyTorch >= 2.4) and gloo's worker threads are torn down during
    finalization, where a thread still joinable aborts the process. The barrier (``wait_for_everyone``, which names
    the device on GPUs) keeps one process from tearing its group down while another still talks to it. Called only
    after success: after an error the processes need not be at the same point, and a barrier could wait forever. A
    no-op in a single process.
    """
    if dist.is_available() and dist.is_initialized():
        from accelerate import PartialState

        state = PartialState()  # the launch's state, made when the run built its trainer
        state.wait_for_everyone()
        state.destroy_process_group()
