"""Print the memory and shape plan of the real Covo-Audio (7B) as markdown: ``python bench/memory_plan.py``.

Parameter counts come from the released config built on the meta device (no weights needed); the step estimate is
the formula in ``grpo_audio/model/memory_plan.py`` (its docstring lists every assumption).

``--config CHECKPOINT/config.json`` plans another model of any family from its own config (a downloaded
Qwen2-Audio-7B-Instruct or Qwen2.5-Omni-7B directory: for the full Omni the thinker's config is taken), with the
family's prompt length: ``--prompt-tokens`` (default: 200 for Covo-Audio, 188 placeholders of a 30 s clip and the
template; 800 for the Qwen families, 750 placeholders of a 30 s clip and the template).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grpo_audio.model.capacity import (
    HF_GENERATE_TOKENS_PER_S_PER_GPU,
    STANDARD_TOPOLOGIES,
    TRAIN_FLOPS_PER_S_PER_GPU,
    VLLM_TOKENS_PER_S_PER_GPU,
    estimate_topology,
)
from grpo_audio.model.memory_plan import (
    activation_bytes_per_token_layer,
    gib,
    kv_cache_bytes_per_token,
    memory_plan,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4, 8], help="Sequences per step.")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on every backbone linear layer.")
    parser.add_argument("--gpu-gib", type=float, default=79.6, help="GPU memory (GiB); an 80 GB H100 has 79.6.")
    parser.add_argument("--reserve-gib", type=float, default=2.0, help="CUDA context + fragmentation (GiB).")
    parser.add_argument("--config", help="a checkpoint's config.json, any family (default: Covo-Audio's released)")
    parser.add_argument("--prompt-tokens", type=int, help="tokens per prompt (default: the family's, see above)")
    args = parser.parse_args(argv)

    config, family = checkpoint_config(args.config)
    prompt_tokens = args.prompt_tokens or (200 if family.name == "covo_audio" else 800)
    plan = memory_plan(tuple(args.micro_batches), args.lora_rank, config, family, prompt_tokens)
    llm = plan.config.get_text_config()
    shape = plan.estimates[0].shape
    source = "released config" if args.config is None else f"{family.title}, {args.config}"
    print(f"### Parameters ({source}, built on the meta device)\n")
    print("| part | parameters | bf16 GiB |")
    print("| --- | ---: | ---: |")
    for label, n in plan.counts.rows(family):
        print(f"| {label} | {n:,} | {gib(2 * n):.2f} |")
    print(f"| LoRA r={args.lora_rank} on q,k,v,o,gate,up,down (fp32) | {plan.lora_params:,} | - |")

    print(
        f"\n### GPU memory of one LoRA GRPO step (G={shape.num_generations}, prompt {shape.prompt_tokens} + "
        f"completion {shape.completion_tokens} tokens, bf16 weights, LoRA r={args.lora_rank}, Adam fp32, "
        "chunked sampled-token log-prob head, HF generate rollouts), GiB\n"
    )
    print(
        "| micro-batch | grad. ckpt | weights | LoRA + Adam | saved activations | backward working set | train peak "
        f"| rollout peak (KV {shape.num_generations} seqs) | step peak | fits {args.gpu_gib:g} GiB "
        f"(- {args.reserve_gib:g} reserved) |"
    )
    print("| ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for est in plan.estimates:
        s = est.shape
        cells = [est.weights, est.lora_states, est.saved_activations, est.working_set, est.train_peak]
        cells += [est.rollout_peak, est.peak]
        fits = "yes" if gib(est.peak) + args.reserve_gib <= args.gpu_gib else "no"
        row = " | ".join(f"{gib(c):.1f}" for c in cells)
        print(f"| {s.micro_batch} | {'on' if s.gradient_checkpointing else 'off'} | {row} | {fits} |")

    a_layer = activation_bytes_per_token_layer(llm, args.lora_rank)
    print(
        f"\nPer token: {a_layer:,} bytes saved per decoder layer ({a_layer * llm.num_hidden_layers / 2**20:.1f} MiB "
        f"over {llm.num_hidden_layers} layers) without checkpointing, {2 * llm.hidden_size:,} per layer with it; "
        f"KV cache {kv_cache_bytes_per_token(llm):,} bytes. Not in the columns: CUDA context and allocator "
        f"fragmentation ({args.reserve_gib:g} GiB reserved for them in the last column), vLLM's own pool, multi-GPU "
        "sharding. Completions are taken at their full length."
    )
    print_capacity(plan, args.gpu_gib, args.reserve_gib, prompt_tokens)
    return 0


def checkpoint_config(path: str | None):
    """(config, family) of a checkpoint's ``config.json`` (the full Qwen2.5-Omni's: its thinker's); Covo-Audio's
    released config without one."""
    from grpo_audio.model.family import COVO_AUDIO, FAMILIES, MODEL_TYPES

    if path is None:
        from grpo_audio.model.checkpoint_format import released_covo_config

        return released_covo_config(), COVO_AUDIO
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        raise SystemExit(f"error: {path}: model_type {model_type!r} is not a family the harness trains")
    family = FAMILIES[MODEL_TYPES[model_type]]
    if model_type == "qwen2_5_omni":
        data = {**data["thinker_config"], "model_type": "qwen2_5_omni_thinker"}
    return family.policy_class().config_class.from_dict(data), family


def print_capacity(plan, gpu_gib: float, reserve_gib: float, prompt_tokens: int = 200) -> None:
    """Per-GPU memory and rough step time of the standard topologies (``grpo_audio/model/capacity.py``)."""
    print(
        f"\n### Capacity per topology (H100 {gpu_gib:g} GiB; micro-batch 1, gradient checkpointing, G=8, prompt "
        f"{prompt_tokens} tokens; a step is 64 prompts x G; step time assumes, per GPU, "
        f"{HF_GENERATE_TOKENS_PER_S_PER_GPU:,.0f} tok/s for HF-generate rollouts on the training GPUs, "
        f"{VLLM_TOKENS_PER_S_PER_GPU:,.0f} tok/s per vLLM server GPU and {TRAIN_FLOPS_PER_S_PER_GPU / 1e12:.0f} "
        "TFLOP/s for the update: computed, not measured)\n"
    )
    print("| topology | completion tokens | weights + grads + optimizer | train peak | rollout peak | fits | step s |")
    print("| --- | ---: | ---: | ---: | ---: | :---: | ---: |")
    for topology in STANDARD_TOPOLOGIES:
        est = estimate_topology(topology, plan.config, plan.counts, plan.lora_params, prompt_tokens=prompt_tokens)
        fits = "yes" if gib(est.peak) + reserve_gib <= gpu_gib else "no"
        rollout = f"{gib(est.rollout_peak):.1f}" if est.rollout_peak else "server"
        print(
            f"| {topology.name} | {topology.completion_tokens} | {gib(est.persistent):.1f} "
            f"| {gib(est.train_peak):.1f} | {rollout} | {fits} | {est.step_seconds:.0f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
