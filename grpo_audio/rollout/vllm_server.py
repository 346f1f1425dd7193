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

Requests go through the ``openai`` package's client (no retries: a sampling request is not repeated behind the
trainer's back): the completions API for rollouts (the vLLM-only fields, ``prompt_embeds`` and the token-id options,
in ``extra_body``), and the same client's plain ``get``/``post`` for vLLM's dev-mode endpoints, which are outside the
OpenAI API. The trainer's environment needs no vLLM.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
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
        extra = {
            "prompt_embeds": self.encode_embeds(embeds.to(self.dtype)),
            **fields,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }
        with self._errors("POST", "/v1/completions"):
            completion = self.client.completions.create(model=self.model_name, prompt=None, extra_body=extra)
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
