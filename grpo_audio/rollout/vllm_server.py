"""``VLLMServerClient``: a separate ``vllm serve`` reached over HTTP (rollout.vllm.mode server), a ``VLLMBackend``.

The server runs on other GPUs (any tensor-parallel size), started from a backbone directory on a filesystem the
trainer shares (``python -m grpo_audio.rollout.backbone_export`` writes one) with ``VLLM_SERVER_DEV_MODE=1 vllm
serve <backbone_dir> --enable-prompt-embeds --skip-tokenizer-init --logprobs-mode processed_logprobs
[--tensor-parallel-size N]``.

* Rollouts: one OpenAI-compatible ``/v1/completions`` request per prompt (base64 ``torch.save`` of the prompt's
  ``prompt_embeds``, its own ``n`` and seed), sent concurrently so that the server batches them.
* Weight sync, ``channel`` (the default): the backbone tensors (LoRA merged, in the server's dtype) are streamed
  one by one over a process group of their own into the server's workers (``weight_channel.py``; NCCL on GPUs,
  gloo on CPU), which load each in place as it arrives (``weight_receiver.py``, the worker extension that
  ``grpo-audio serve-rollouts`` starts the server with); nothing is written to disk. The trainer asks for it
  through the dev-mode ``/collective_rpc`` in a thread while it sends. ``disk`` (the explicit fallback): the
  backbone directory is rewritten from the model and the server reloads it in place (``reload_weights(
  weights_path=...)``). Either way ``/reset_prefix_cache`` follows, and with several training processes rank 0
  syncs while the others wait at a barrier. ``last_sync_bytes``: what the last sync moved (tensor bytes sent, or
  the files written).
* At start the client checks the server's flags (``/server_info``) and reads its weight dtype; a server that cannot
  be used as configured raises ``VLLMServerError`` saying what to change.

Requests go through the ``openai`` package's client (no retries: a sampling request is not repeated behind the
trainer's back): the completions API for rollouts (the vLLM-only fields, ``prompt_embeds`` and the token-id options,
in ``extra_body``), and the same client's plain ``get``/``post`` for vLLM's dev-mode endpoints, which are outside the
OpenAI API. The trainer's environment needs no vLLM.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import openai
import torch

from grpo_audio.distributed import share_from_main
from grpo_audio.rollout.backbone_export import backbone_weights, export_backbone
from grpo_audio.rollout.daemon import in_daemon_thread
from grpo_audio.rollout.lora_export import adapter_files, engine_max_rank, lora_only_possible, write_adapter
from grpo_audio.rollout.vllm_backend import SampledCompletion, check_finish
from grpo_audio.rollout.weight_channel import WeightChannel, device_for
from grpo_audio.rollout.weight_receiver import READY

LORA_NAME = "policy"  # the adapter every request names under LoRA-only sync, reloaded in place at each sync
LORA_SUBDIR = "policy_lora"  # weight_sync 'disk': the adapter directory inside the backbone directory


class VLLMServerError(RuntimeError):
    """The vLLM server cannot be used as configured; the message says what to change."""


class VLLMServerClient:
    """A separate ``vllm serve`` (mode server), over HTTP; see the module docstring for how to start it."""

    def __init__(
        self,
        url: str,
        backbone_dir: str | Path,
        timeout_s: float = 600.0,
        max_parallel: int = 64,
        weight_sync: str = "channel",
        sync_port: int = 51216,
        lora_rank: int | None = None,
    ) -> None:
        if weight_sync not in ("channel", "disk"):
            raise ValueError(f"weight_sync {weight_sync!r}: expected 'channel' or 'disk'")
        self.url = url.rstrip("/")
        self.backbone_dir = Path(backbone_dir)
        self.timeout_s = timeout_s
        self.max_parallel = max_parallel
        self.weight_sync, self.sync_port = weight_sync, sync_port
        self.channel: WeightChannel | None = None
        self.channel_token: str | None = None  # names this trainer's channel on the server (_open_channel)
        self._manifest: list[list] | None = None  # [name, dtype, shape] per tensor, in sending order
        self.last_sync_bytes = 0
        # LoRA-only sync (lora_rank given): the server holds the base backbone and samples with the adapter "policy"
        self.lora_rank = lora_rank
        self.lora_active = False  # requests name the adapter (after the first LoRA-only sync)
        self.base_current = False  # the server's backbone is known to be the base weights
        limits = httpx2.Limits(max_connections=max_parallel, max_keepalive_connections=max_parallel)
        self.client = openai.OpenAI(
            base_url=self.url + "/v1",
            api_key="EMPTY",  # the library needs one; a vllm serve without --api-key ignores it
            timeout=timeout_s,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(limits=limits),
        )
        self.root = self.client.with_options(base_url=self.url)  # the dev-mode endpoints are outside /v1
        models = self._request("GET", "/v1/models")["data"]
        if not models:
            raise VLLMServerError(f"the vLLM server at {self.url} serves no model")
        self.model_name = models[0]["id"]
        self.dtype = self._check_server_config()
        if weight_sync == "channel":
            self._check_weight_receiver()
        if lora_rank is not None:
            self._check_lora(lora_rank)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """A JSON request to ``path`` under the server root ({} for an empty reply)."""
        with self._errors(method, path):
            if method == "GET":
                payload = self.root.get(path, cast_to=str)
            else:
                payload = self.root.post(path, body=body, cast_to=str)
        return json.loads(payload) if payload else {}

    def _errors(self, method: str, path: str):
        return _server_errors(self.url, method, path, self.timeout_s)

    def _check_weight_receiver(self) -> None:
        """The server runs the harness's worker extension (``weight_receiver.py``), which the channel sync needs."""
        try:
            results = self._rpc("weight_receiver_ready")
        except VLLMServerError as err:
            if "/collective_rpc is missing" in str(err):
                raise
            results = None
        if not results or any(r != READY for r in results):
            raise VLLMServerError(
                f"the vLLM server at {self.url} cannot receive weights over a channel: start it with `grpo-audio "
                "serve-rollouts BACKBONE_DIR` (it adds the harness's worker extension), or set "
                "rollout.vllm.weight_sync=disk"
            )

    def _check_lora(self, rank: int) -> None:
        """The server can apply an adapter of rank ``rank`` (LoRA-only sync)."""
        fix = (
            f"restart it with `grpo-audio serve-rollouts BACKBONE_DIR --enable-lora --max-lora-rank "
            f"{engine_max_rank(rank)}`, or set rollout.vllm.sync_lora_only=false"
        )
        if self.server_lora_rank is None:
            raise VLLMServerError(
                f"the vLLM server at {self.url} runs without LoRA (model.lora syncs the adapter only): {fix}"
            )
        if self.server_lora_rank < rank:
            raise VLLMServerError(
                f"the vLLM server at {self.url} takes LoRA ranks up to {self.server_lora_rank}, model.lora.r is "
                f"{rank}: {fix}"
            )

    def _rpc(self, method: str, *args: str) -> list:
        """Call ``method`` on every server worker (dev-mode ``/collective_rpc``); their results, in worker order."""
        return self._request("POST", "/collective_rpc", {"method": method, "args": list(args)}).get("results", [])

    def _check_server_config(self) -> torch.dtype:
        """The server's weight dtype, after checking the flags the engine relies on."""
        info = self._request("GET", "/server_info?config_format=json")["vllm_config"]
        parallel = info.get("parallel_config", {})
        self.server_workers = int(parallel.get("world_size") or 1)
        lora = info.get("lora_config") or None
        self.server_lora_rank = int(lora["max_lora_rank"]) if lora else None
        config = info["model_config"]
        wrong = []
        if not config.get("enable_prompt_embeds"):
            wrong.append("--enable-prompt-embeds")
        if config.get("logprobs_mode") != "processed_logprobs":
            wrong.append("--logprobs-mode processed_logprobs")
        if wrong:
            raise VLLMServerError(f"restart the vLLM server at {self.url} with {' '.join(wrong)}")
        return getattr(torch, str(config["dtype"]).removeprefix("torch."))

    @staticmethod
    def encode_embeds(embeds: torch.Tensor) -> str:
        buffer = io.BytesIO()
        torch.save(embeds.detach().to("cpu").clone(), buffer)  # clone: save this tensor's bytes, not a larger storage
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def _complete(self, embeds: torch.Tensor, fields: dict) -> list[SampledCompletion]:
        extra = {
            "prompt_embeds": self.encode_embeds(embeds.to(self.dtype)),
            **fields,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        with self._errors("POST", "/v1/completions"):
            model = LORA_NAME if self.lora_active else self.model_name
            completion = self.client.completions.create(model=model, prompt=None, extra_body=extra)
        choices = sorted(completion.choices, key=lambda c: c.index)
        if len(choices) != fields["n"]:
            raise VLLMServerError(f"the server returned {len(choices)} completions for n={fields['n']}")
        return [
            SampledCompletion(
                token_ids=list((c.model_extra or {})["token_ids"]),
                # JSON null: a NaN log-prob; TRL's correction leaves NaN positions uncorrected
                logprobs=[float("nan") if x is None else float(x) for x in c.logprobs.token_logprobs],
                finish_reason=check_finish(c.finish_reason),
            )
            for c in choices
        ]

    def generate(self, embeds: list[torch.Tensor], requests: list[dict]) -> list[list[SampledCompletion]]:
        # One HTTP request per prompt (each has its own n and seed), sent concurrently: the server batches them
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_parallel, len(embeds)))) as pool:
            return list(pool.map(self._complete, embeds, requests))

    def load_weights(self, model) -> None:
        """Bring the server's backbone to ``model``'s weights (``weight_sync``: over the channel, or through the
        backbone directory), then clear its prefix cache.

        With several training processes (torch.distributed initialised) rank 0 syncs while the others wait at a
        barrier, so that no process samples from the old weights."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed or torch.distributed.get_rank() == 0:
            self.last_sync_bytes = self._sync(model)
            self._request("POST", "/reset_prefix_cache")
        if distributed:
            torch.distributed.barrier()
        self.lora_active = share_from_main(lambda: self.lora_active)  # every process names the same model

    def _sync(self, model) -> int:
        """One sync from process 0: the merged backbone, or (LoRA-only) the base once and then the adapter."""
        if self.weight_sync == "channel" and self.channel is None:
            self._open_channel("nccl" if next(model.parameters()).device.type == "cuda" else "gloo")
        lora_only = self.lora_rank is not None and lora_only_possible(model)
        if not lora_only:  # no adapter, or base weights train too: the merged backbone, sampled without an adapter
            self.lora_active, self.base_current = False, False
            return self._push_backbone(model, merge_lora=True)
        moved = 0
        if not self.base_current:  # the server's weights are of unknown origin until the base is pushed once
            moved += self._push_backbone(model, merge_lora=False)
            self.base_current = True
        moved += self._send_adapter(model)
        self.lora_active = True
        return moved

    def _send_adapter(self, model) -> int:
        """The adapter to the server (over the channel into a directory on its host, or written beside the backbone
        directory), loaded in place as LORA_NAME; the adapter's tensor bytes."""
        tensors, config = adapter_files(model, dtype=self.dtype)
        if self.weight_sync == "channel":
            manifest = [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors.items()]
            target = device_for(self.channel.backend)

            def send() -> None:
                for tensor in tensors.values():
                    self.channel.broadcast(tensor.to(target))

            paths, _ = self._alongside_rpc(
                send, "receive_adapter", self.channel_token, json.dumps(manifest), json.dumps(config)
            )
            path = paths[0]  # worker 0 wrote it
        else:
            write_adapter(model, self.backbone_dir / LORA_SUBDIR, dtype=self.dtype)
            path = str((self.backbone_dir / LORA_SUBDIR).resolve())
        body = {"lora_name": LORA_NAME, "lora_path": path, "load_inplace": True}
        with self._errors("POST", "/v1/load_lora_adapter"):  # its reply is a sentence, not JSON
            self.root.post("/v1/load_lora_adapter", body=body, cast_to=str)
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def _push_backbone(self, model, merge_lora: bool) -> int:
        """The backbone (LoRA merged, or the base alone) to the server the ``weight_sync`` way; the bytes moved."""
        if self.weight_sync == "channel":
            return self._send_weights(model, merge_lora)
        return self._reload_from_disk(model, merge_lora)

    def _reload_from_disk(self, model, merge_lora: bool = True) -> int:
        export_backbone(model, self.backbone_dir, dtype=self.dtype, merge_lora=merge_lora)
        body = {
            "method": "reload_weights",
            "kwargs": {"weights_path": str(self.backbone_dir.resolve()), "is_checkpoint_format": True},
        }
        self._request("POST", "/collective_rpc", body)
        return sum(p.stat().st_size for p in self.backbone_dir.glob("*.safetensors"))

    def _send_weights(self, model, merge_lora: bool = True) -> int:
        """Stream the backbone over the channel while the server's workers receive it; the bytes sent."""
        if self._manifest is None:  # names, dtypes and shapes do not change during a run (nor with LoRA merged)
            self._manifest = [
                [name, str(self.dtype).removeprefix("torch."), list(tensor.shape)]
                for name, tensor in backbone_weights(model, merge_lora=False)
            ]
        target = device_for(self.channel.backend)

        def send() -> int:
            sent = 0
            weights = backbone_weights(model, merge_lora)
            for (name, tensor), (listed, _, _) in zip(weights, self._manifest, strict=True):
                if name != listed:
                    raise RuntimeError(f"backbone tensor {name} where the manifest lists {listed}")
                tensor = tensor.to(device=target, dtype=self.dtype).contiguous()
                self.channel.broadcast(tensor)
                sent += tensor.numel() * tensor.element_size()
            return sent

        received, sent = self._alongside_rpc(send, "receive_weights", self.channel_token, json.dumps(self._manifest))
        if any(int(r) != sent for r in received):
            raise VLLMServerError(
                f"the server's workers received {received} bytes of weights; the trainer sent {sent}"
            )
        return sent

    def _open_channel(self, backend: str) -> None:
        """Join the channel group with the server's workers: they are ranks 0..W-1, the trainer W."""
        host = urlsplit(self.url).hostname or "localhost"
        world = self.server_workers + 1
        spec = {"host": host, "port": self.sync_port, "world_size": world, "backend": backend}
        spec["timeout_s"] = self.timeout_s
        spec["token"] = self.channel_token = uuid.uuid4().hex  # names this trainer's channel on the server

        def join() -> WeightChannel:
            return WeightChannel(host, self.sync_port, world - 1, world, backend, self.timeout_s)

        # A channel an earlier trainer left (stopped or killed; a resume asks for the same port) is closed first,
        # and before this process connects: its store still listens on the port, and joining it would never meet
        # the new group.
        self._rpc("close_weight_channel")
        _, self.channel = self._alongside_rpc(join, "open_weight_channel", json.dumps(spec))

    def _alongside_rpc(self, action, method: str, *args: str):
        """Run ``action`` here while the server's workers run ``method``: (the workers' results, action's result).

        Both block until the other side takes part (a rendezvous, a broadcast), so each runs in a thread of its own.
        If the server fails first, its error is raised without waiting for ``action``, which then ends at the
        channel's timeout in its thread (a daemon thread: it does not hold the process open)."""
        remote = in_daemon_thread(self._rpc, method, *args)
        local = in_daemon_thread(action)
        done, _ = wait([remote, local], return_when=FIRST_EXCEPTION)
        if remote in done and remote.exception() is not None:
            raise VLLMServerError(f"weight sync: the server's {method} failed: {remote.exception()}")
        return remote.result(), local.result()


@contextmanager
def _server_errors(url: str, method: str, path: str, timeout_s: float) -> Iterator[None]:
    """Turns the ``openai`` client's errors into ``VLLMServerError`` saying what to change."""
    try:
        yield
    except openai.APIStatusError as err:
        bare = path.split("?")[0]
        if err.status_code == 404 and bare in ("/collective_rpc", "/reset_prefix_cache", "/server_info"):
            raise VLLMServerError(
                f"{url}{bare} is missing: start the server with VLLM_SERVER_DEV_MODE=1 (weight sync needs its "
                "/collective_rpc and /reset_prefix_cache endpoints)"
            ) from err
        detail = err.response.text[:2000]
        raise VLLMServerError(f"{method} {url}{path} failed with HTTP {err.status_code}: {detail}") from err
    except openai.APITimeoutError as err:
        raise VLLMServerError(
            f"{method} {url}{path}: no reply within {timeout_s} s (rollout.vllm.server_timeout_s)"
        ) from err
    except openai.APIConnectionError as err:
        cause = err.__cause__ or err
        raise VLLMServerError(
            f"no vLLM server answers at {url} ({type(cause).__name__}: {cause}); start one (see "
            "grpo_audio/rollout/vllm_server.py) or fix rollout.vllm.server_url"
        ) from err
