"""The policy's LoRA adapter as vLLM loads one: LoRA-only weight sync (``rollout.vllm.sync_lora_only``).

With ``model.lora`` only the adapter factors train; the backbone's base weights never change. An engine that holds
the base once and applies the adapter itself (vLLM's LoRA support, which works with prompt embeddings) then needs
only the adapter at each sync: for the 7B with r=8 on every linear layer, 20,185,088 parameters (40 MB in bf16)
instead of 7.7 billion (15.5 GB).

``adapter_files(model)`` gives the adapter in PEFT's file layout under the plain Qwen2 names vLLM's Qwen2 model
uses (``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`` ...). PEFT's scaling (``alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA) is folded into ``lora_B`` and the config says ``lora_alpha = r`` (scaling 1), so
the engine computes ``W x + B' A x`` with ``B' = scaling * B``, the trainer's ``W x + scaling * B A x``, whatever
scaling convention the engine follows. ``lora_only_possible(model)`` says whether the adapter is all that
changes: LoRA layers in the backbone, one active adapter, no DoRA, and no trainable base parameter of the backbone
or LM head (``modules_to_save``, a trained embedding); otherwise the engines sync the merged backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from grpo_audio.rollout.backbone_export import _lora_layers, covo_base

# vLLM's accepted max_lora_rank values (vllm.config.lora.MaxLoRARanks, 0.32)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def lora_only_possible(model) -> bool:
    """Whether the active LoRA adapter is the only trainable part of the backbone and LM head (module docstring)."""
    base = covo_base(model)
    language_model = base.backbone
    try:
        layers = _lora_layers(language_model)
    except NotImplementedError:  # DoRA
        return False
    if not layers or any(len(m.active_adapters) != 1 for m in layers.values()):
        return False
    if any(m.lora_bias.get(m.active_adapters[0], False) for m in layers.values()):
        return False  # a trained LoRA bias: not in vLLM's adapter format
    named = [*language_model.named_parameters(), *base.get_output_embeddings().named_parameters()]
    return not any(p.requires_grad and ".lora_" not in name for name, p in named)


def adapter_rank(model) -> int:
    """The adapter's rank (the largest over its layers)."""
    layers = _lora_layers(covo_base(model).backbone)
    return max(m.r[m.active_adapters[0]] for m in layers.values())


def engine_max_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def adapter_files(model, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, config) of the active adapter in PEFT's layout for the plain Qwen2 names, scaling folded into B."""
    layers = _lora_layers(covo_base(model).backbone)
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    rank = 0
    for name, module in layers.items():
        adapter = module.active_adapters[0]
        a = module.lora_A[adapter].weight.detach()
        b = module.lora_B[adapter].weight.detach() * module.scaling[adapter]
        dtype_ = dtype or a.dtype
        prefix = f"base_model.model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = a.to(device="cpu", dtype=dtype_).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.to(device="cpu", dtype=dtype_).contiguous()
        targets.add(name.rsplit(".", 1)[-1])
        rank = max(rank, a.size(0))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": rank,  # scaling 1: the trainer's scaling is inside lora_B
        "target_modules": sorted(targets),
        "bias": "none",
        "lora_dropout": 0.0,
    }
    return tensors, config


def write_adapter(model, out_dir: str | Path, dtype: torch.dtype | None = None) -> int:
    """Write the adapter (``adapter_config.json``, ``adapter_model.safetensors``) into ``out_dir``; its bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, config = adapter_files(model, dtype)
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return (out / WEIGHTS_NAME).stat().st_size


__all__ = ["adapter_files", "adapter_rank", "engine_max_rank", "lora_only_possible", "write_adapter"]
