"""``VLLMServerClient``: a separate ``vllm serve`` reached over HTTP (rollout.vllm.mode server), a ``VLLMBackend``.

The server runs on other GPUs (any tensor-parallel size), started from a backbone directory on a filesystem the
trainer shares (``python -m grpo_audio.rollout.backbone_export`` writes one) with ``VLLM_SERVER_DEV_MODE=1 vllm
serve <backbone_dir> --enable-prompt-embeds --skip-tokenizer-init --logprobs-mode processed_logprobs
[--tensor-parallel-size N]``.

* Rollouts: one OpenAI-compatible ``/v1/completions`` request per prompt (base64 ``torch.save`` of the prompt's
  ``prompt_embeds``, its own ``n`` and seed), sent concurrently so that the server batches them.
* Weight sync: the backbone directory is rewritten from the model, the server reloads it in place through the
  dev-mode ``/collective_rpc`` (``reload_weights(weights_path=...)``), then ``/reset_prefix_cache``. With several
  training processes, rank 0 rewrites and reloads while the others wait at a barrier.
* At start the client checks the server's flags (``/server_info``) and reads its weight dtype; a server that cannot
  be used as configured raises ``VLLMServerError`` saying what to change.

Standard library HTTP only: the trainer's environment needs no vLLM.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from grpo_audio.rollout.backbone_export import export_backbone
from grpo_audio.rollout.vllm_backend import SampledCompletion, check_finish


class VLLMServerError(RuntimeError):
    """The vLLM server cannot be used as configured; the message says what to change."""


class VLLMServerClient:
    """A separate ``vllm serve`` (mode server), over HTTP; see the module docstring for how to start it."""

    def __init__(self, url: str, backbone_dir: str | Path, timeout_s: float = 600.0, max_parallel: int = 64) -> None:
        self.url = url.rstrip("/")
        self.backbone_dir = Path(backbone_dir)
        self.timeout_s = timeout_s
        self.max_parallel = max_parallel
        models = self._request("GET", "/v1/models")["data"]
        if not models:
            raise VLLMServerError(f"the vLLM server at {self.url} serves no model")
        self.model_name = models[0]["id"]
        self.dtype = self._check_server_config()

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:2000]
            if err.code == 404 and path in ("/collective_rpc", "/reset_prefix_cache", "/server_info"):
                raise VLLMServerError(
                    f"{self.url}{path} is missing: start the server with VLLM_SERVER_DEV_MODE=1 (weight sync needs "
                    "its /collective_rpc and /reset_prefix_cache endpoints)"
                ) from err
            raise VLLMServerError(f"{method} {self.url}{path} failed with HTTP {err.code}: {detail}") from err
        except urllib.error.URLError as err:
            raise VLLMServerError(
                f"no vLLM server answers at {self.url} ({err.reason}); start one (see grpo_audio/rollout/"
                "vllm_server.py) or fix rollout.vllm.server_url"
            ) from err
        return json.loads(payload) if payload else {}

    def _check_server_config(self) -> torch.dtype:
        """The server's weight dtype, after checking the flags the engine relies on."""
        config = self._request("GET", "/server_info?config_format=json")["vllm_config"]["model_config"]
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
        body = {
            "model": self.model_name,
            "prompt_embeds": self.encode_embeds(embeds.to(self.dtype)),
            **fields,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        choices = sorted(self._request("POST", "/v1/completions", body)["choices"], key=lambda c: c["index"])
        if len(choices) != fields["n"]:
            raise VLLMServerError(f"the server returned {len(choices)} completions for n={fields['n']}")
        return [
            SampledCompletion(
                token_ids=list(c["token_ids"]),
                # JSON null: a NaN log-prob; TRL's correction leaves NaN positions uncorrected
                logprobs=[float("nan") if x is None else float(x) for x in c["logprobs"]["token_logprobs"]],
                finish_reason=check_finish(c["finish_reason"]),
            )
            for c in choices
        ]

    def generate(self, embeds: list[torch.Tensor], requests: list[dict]) -> list[list[SampledCompletion]]:
        # One HTTP request per prompt (each has its own n and seed), sent concurrently: the server batches them
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_parallel, len(embeds)))) as pool:
            return list(pool.map(self._complete, embeds, requests))

    def load_weights(self, model) -> None:
        """Rewrite the backbone directory from ``model`` and have the server reload it in place.

        With several training processes (torch.distributed initialised) rank 0 writes and reloads while the others
        wait at a barrier, so that no process samples from the old weights."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed or torch.distributed.get_rank() == 0:
            export_backbone(model, self.backbone_dir, dtype=self.dtype)
            body = {
                "method": "reload_weights",
                "kwargs": {"weights_path": str(self.backbone_dir.resolve()), "is_checkpoint_format": True},
            }
            self._request("POST", "/collective_rpc", body)
            self._request("POST", "/reset_prefix_cache")
        if distributed:
            torch.distributed.barrier()
