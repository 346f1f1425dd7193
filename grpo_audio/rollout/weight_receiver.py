"""``WeightReceiver``: the vLLM worker extension that receives the trainer's weights over a ``WeightChannel``.

``grpo-audio serve-rollouts`` starts ``vllm serve`` with ``--worker-extension-cls
grpo_audio.rollout.weight_receiver.WeightReceiver``: vLLM mixes this class into each of its workers, and the
trainer calls its methods through the dev-mode ``/collective_rpc`` endpoint (``VLLMServerClient``):

* ``weight_receiver_ready()``: answers ``"grpo-audio"``; the trainer checks it at start, so a server started
  without the extension is refused with the command to start it;
* ``open_weight_channel(spec)``: joins the channel group (``weight_channel.py``) as rank = the worker's rank; the
  spec's ``token`` names the trainer, and later calls carry it (a trainer whose channel another one replaced gets
  an error at once);
* ``receive_weights(manifest)``: for each ``[name, dtype, shape]`` of the manifest, in order, receives the tensor by
  broadcast from the trainer and hands it to the model runner's in-place ``reload_weights`` (plain Qwen2 names,
  checkpoint format: vLLM fuses q/k/v and gate/up and takes its tensor-parallel shard as for a checkpoint file),
  one tensor at a time, so the extra memory is one tensor;
* ``receive_adapter(manifest, config)``: LoRA-only sync: the adapter's tensors, written as a PEFT adapter directory
  on the server's host for ``/v1/load_lora_adapter``;
* ``close_weight_channel()``.

Arguments travel as JSON strings (the endpoint passes strings through). Runs inside vLLM's worker process; imports
only torch and the channel module.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from pathlib import Path

import torch

from grpo_audio.rollout.weight_channel import WeightChannel, device_for

READY = "grpo-audio"


class WeightReceiver:
    """Mixed into vLLM's worker class (``--worker-extension-cls``); ``self`` is the worker."""

    def weight_receiver_ready(self) -> str:
        return READY

    def open_weight_channel(self, spec: str) -> None:
        """``spec``: JSON ``{host, port, world_size, backend, timeout_s}``; this worker joins as its own rank. A
        channel left by an earlier trainer (one that stopped, or was killed) is closed first: its store would hold
        the port that the same command, resumed, asks for again."""
        options = json.loads(spec)
        self.close_weight_channel()
        self._weight_channel_token = options["token"]
        self._weight_channel = WeightChannel(
            options["host"],
            int(options["port"]),
            rank=int(self.rank),
            world_size=int(options["world_size"]),
            backend=options["backend"],
            timeout_s=float(options["timeout_s"]),
        )

    def _channel_of(self, token: str) -> WeightChannel:
        """The channel the trainer holding ``token`` opened; an error at once if another trainer has opened one
        since (one server serves one training run), instead of a receive that waits for the channel's timeout."""
        channel = getattr(self, "_weight_channel", None)
        if channel is None or getattr(self, "_weight_channel_token", None) != token:
            raise RuntimeError(
                "this trainer's weight channel is closed: another trainer opened one on this server since (one "
                "server serves one training run)"
            )
        return channel

    def receive_weights(self, token: str, manifest: str) -> int:
        """Receive every tensor the JSON ``manifest`` lists and load it in place; returns the bytes received."""
        channel = self._channel_of(token)
        entries = json.loads(manifest)
        device = device_for(channel.backend)
        received = 0

        def tensors():
            nonlocal received
            for name, dtype, shape in entries:
                tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
                channel.broadcast(tensor)
                received += tensor.numel() * tensor.element_size()
                yield name, tensor

        self.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return received

    def receive_adapter(self, token: str, manifest: str, config: str) -> str:
        """Receive the LoRA adapter's tensors the JSON ``manifest`` lists and write them, with the JSON adapter
        ``config``, as a PEFT adapter directory on this host (worker 0 writes; every worker takes part in the
        broadcasts). Returns the directory, which the trainer then asks the server to load."""
        from safetensors.torch import save_file

        channel = self._channel_of(token)
        device = device_for(channel.backend)
        tensors = {}
        for name, dtype, shape in json.loads(manifest):
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
            channel.broadcast(tensor)
            tensors[name] = tensor.cpu()
        out = Path(tempfile.gettempdir()) / "grpo-audio-lora" / f"server-{os.getpid()}" / "policy"
        if int(self.rank) == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
            (out / "adapter_config.json").write_text(config, encoding="utf-8")
        return str(out)

    def close_weight_channel(self) -> None:
        """Drop this worker's channel, if any (the trainer closes a predecessor's before it opens its own)."""
        channel = getattr(self, "_weight_channel", None)
        if channel is not None:
            channel.close()
        self._weight_channel = None
        gc.collect()  # the store's listening socket closes with its last reference


__all__ = ["READY", "WeightReceiver"]
