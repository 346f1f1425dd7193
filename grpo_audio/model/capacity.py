"""Per-GPU memory and rough step time of a training topology for the 7B model (docs/scale-out.md's capacity table).

Extends the one-GPU LoRA estimate of ``memory_plan`` (activations, log-prob head, rollout KV cache: see that module)
to several GPUs, full fine-tuning and sharding. Bytes per trainable parameter ``N_t`` (the Qwen2 backbone with its
embeddings and LM head; encoder and adapter frozen) and per parameter ``N`` of the whole model:

* LoRA (any launch): bf16 weights ``2 N`` on every GPU plus ``16 N_lora`` (fp32 adapter, grad, Adam m and v);
  ZeRO/FSDP would shard only the tiny adapter state, so LoRA rows use DDP;
* full fine-tuning with bf16 mixed precision: weights ``2 N``, gradients ``2 N_t``, fp32 master weights and Adam
  moments ``12 N_t``. DDP keeps all of it on every GPU; ZeRO-2 divides gradients and optimizer state by the
  number of training GPUs ``D``; ZeRO-3 / FSDP divide the weights too;
* activations and the backward working set: ``memory_plan.estimate_step_memory`` (the LoRA per-token figure; full
  fine-tuning saves the same layer inputs, now for the base weights' gradients instead of the LoRA A matrices);
* rollouts on the training GPUs (``rollout.engine: hf``): the KV cache of one group plus the prefill working set,
  over the full weights: under ZeRO-3 generation gathers them (TRL's ``ds3_gather_for_generation``), so the
  rollout peak holds ``2 N`` whatever ``D`` is. With a separate vLLM server the training GPUs do no rollout.

Step time (rough, computed, not measured): rollout tokens ``prompts x G x C`` at
``HF_GENERATE_TOKENS_PER_S_PER_GPU`` per training GPU (rollouts on the training GPUs) or ``VLLM_TOKENS_PER_S_PER_GPU``
per server GPU, plus the update at ``flops_per_token x (P + C)`` per sequence over the training GPUs at
``TRAIN_FLOPS_PER_S_PER_GPU``, with ``flops_per_token`` = ``6 N_t`` (full) or ``4 N_t`` (LoRA: no weight gradients)
and ``+2 N_t`` for gradient checkpointing's recomputed forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpo_audio.model.memory_plan import BF16, FP32, StepShape, estimate_step_memory

# Assumptions of the step-time column, for one H100 80 GB in bf16 (see the module docstring). Anchor: published
# vLLM figures for an 8B on one H100 are about 5.8k output tok/s (FP8, MLPerf); HF generate decodes one group at
# a time in eager mode, several times slower. Neither was measured here (no GPU).
HF_GENERATE_TOKENS_PER_S_PER_GPU = 1500.0
VLLM_TOKENS_PER_S_PER_GPU = 5000.0
TRAIN_FLOPS_PER_S_PER_GPU = 400e12  # 40 % of the H100's dense bf16 peak


@dataclass(frozen=True)
class Topology:
    """``train_gpus`` GPUs run the trainer (``sharding``: ddp, zero2, zero3); ``rollout_gpus`` > 0 serve vLLM."""

    name: str
    train_gpus: int
    sharding: str  # "ddp", "zero2", "zero3" (FSDP full shard: as zero3)
    lora: bool
    rollout_gpus: int = 0  # 0: rollouts on the training GPUs (HF generate)
    num_generations: int = 8
    completion_tokens: int = 1024
    prompts_per_step: int = 64
    gradient_checkpointing: bool = True


@dataclass(frozen=True)
class TopologyEstimate:
    topology: Topology
    persistent: int  # bytes per training GPU: weights, gradients, optimizer state
    train_peak: int
    rollout_peak: int  # 0 when rollouts run on a separate server
    step_seconds: float

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.rollout_peak)


def estimate_topology(
    topology: Topology, config, counts, n_lora: int, micro_batch: int = 1, prompt_tokens: int = StepShape.prompt_tokens
) -> TopologyEstimate:
    n_total = counts.total
    n_train = counts.backbone + counts.embeddings + counts.lm_head
    d = topology.train_gpus
    shape = StepShape(
        micro_batch,
        topology.gradient_checkpointing,
        num_generations=topology.num_generations,
        prompt_tokens=prompt_tokens,
        completion_tokens=topology.completion_tokens,
    )
    step = estimate_step_memory(config, shape, counts, n_lora)
    if topology.lora:
        persistent = BF16 * n_total + 16 * n_lora
        full_weights_on_gpu = True
    else:
        weights = BF16 * n_total / (d if topology.sharding == "zero3" else 1)
        grads = BF16 * n_train / (d if topology.sharding in ("zero2", "zero3") else 1)
        optimizer = 3 * FP32 * n_train / (d if topology.sharding in ("zero2", "zero3") else 1)
        persistent = int(weights + grads + optimizer)
        full_weights_on_gpu = topology.sharding != "zero3"
    train_peak = persistent + step.saved_activations + step.working_set
    if topology.rollout_gpus:
        rollout_peak = 0
    else:
        gathered = 0 if full_weights_on_gpu else BF16 * n_total - BF16 * n_total // d  # ZeRO-3 gathers the rest
        rollout_peak = persistent + gathered + step.kv_cache + step.rollout_working_set
    sequences = topology.prompts_per_step * topology.num_generations
    rollout_tokens = sequences * topology.completion_tokens
    rate = (
        VLLM_TOKENS_PER_S_PER_GPU * topology.rollout_gpus
        if topology.rollout_gpus
        else (HF_GENERATE_TOKENS_PER_S_PER_GPU * d)
    )
    flops_per_token = (4 if topology.lora else 6) * n_train + (2 * n_train if topology.gradient_checkpointing else 0)
    train_tokens = sequences * shape.seq_tokens
    seconds = rollout_tokens / rate + flops_per_token * train_tokens / (TRAIN_FLOPS_PER_S_PER_GPU * d)
    return TopologyEstimate(topology, persistent, train_peak, rollout_peak, seconds)


STANDARD_TOPOLOGIES = (
    Topology("1 GPU, LoRA r=8", 1, "ddp", True),
    Topology("1 GPU, full", 1, "ddp", False),
    Topology("8 GPUs DDP, LoRA r=8", 8, "ddp", True),
    Topology("8 GPUs DDP, full", 8, "ddp", False),
    Topology("8 GPUs ZeRO-2, full", 8, "zero2", False),
    Topology("8 GPUs ZeRO-3 / FSDP, full", 8, "zero3", False),
    Topology("6 GPUs ZeRO-3 + 2 GPUs vLLM server (TP 2), full", 6, "zero3", False, rollout_gpus=2),
    Topology("8 GPUs DDP, LoRA r=8, C=4096", 8, "ddp", True, completion_tokens=4096),
    Topology("8 GPUs ZeRO-3, full, C=4096", 8, "zero3", False, completion_tokens=4096),
    Topology("8 GPUs LoRA + 8 GPUs vLLM server (2 nodes), C=4096", 8, "ddp", True, 8, completion_tokens=4096),
    Topology("16 GPUs ZeRO-3 + 8 GPUs vLLM server (3 nodes), full, C=4096", 16, "zero3", False, 8, 8, 4096),
)
