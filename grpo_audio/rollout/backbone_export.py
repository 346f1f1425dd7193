"""The Qwen2 backbone of an audio model (any family) as a plain ``Qwen2ForCausalLM``: names, merged LoRA, files.

vLLM serves only the backbone: the trainer keeps the Whisper encoder and the adapter and hands vLLM audio-merged
prompt embeddings (https://docs.vllm.ai/en/stable/features/prompt_embeds/). The backbone's parameters (the model's
``backbone``: ``model.language_model`` for Covo-Audio and Qwen2-Audio, ``model`` for Qwen2.5-Omni's thinker) are
renamed to the plain Qwen2 layout::

    <backbone>.X             ->  model.X          (embed_tokens, layers.N.*, norm)
    lm_head.weight           ->  lm_head.weight   (untied)

``backbone_weights`` yields them from a plain or PEFT-wrapped model; LoRA deltas are added on the fly
(``W + scale * B @ A``), so the trained model itself is never merged and unmerged (no drift from repeated
merge/unmerge round trips). ``export_backbone`` writes them with the text config as a checkpoint directory
vLLM loads; ``check_backbone_dir`` validates such a directory against the model before an engine is started on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from grpo_audio.console import say

ARCHITECTURE = "Qwen2ForCausalLM"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# The config fields whose mismatch makes a backbone directory unusable for this model.
SHAPE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


class BackboneDirError(ValueError):
    """A backbone directory that vLLM cannot load for this model; the message says what is wrong."""


def covo_base(model):
    """The ``CovoAudioForConditionalGeneration`` inside a possibly PEFT- or accelerate-wrapped model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "module", base)


def _lora_layers(language_model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """LoRA-wrapped modules of the backbone by name (none for a plain model)."""
    layers = {}
    for name, module in language_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "get_base_layer"):
            if any(module.use_dora.get(a, False) for a in module.active_adapters):
                raise NotImplementedError(f"{name}: DoRA adapters cannot be merged for the rollout engine")
            layers[name] = module
    return layers


def _lora_delta(module, param: str) -> torch.Tensor | None:
    """The active adapters' contribution to the base layer's ``weight`` or ``bias`` (None: nothing to add)."""
    if module.disable_adapters or module.merged:  # disabled, or already inside the base weight
        return None
    delta = None
    for adapter in module.active_adapters:
        if adapter not in module.lora_A:
            continue
        if param == "weight":
            part = module.get_delta_weight(adapter)
        elif param == "bias" and module.lora_bias.get(adapter, False):
            part = module.lora_B[adapter].bias * module.scaling[adapter]
        else:
            continue
        delta = part if delta is None else delta + part
    return delta


def backbone_weights(model, merge_lora: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """``(Qwen2ForCausalLM name, tensor)`` for every backbone parameter and the LM head, LoRA merged (or, with
    ``merge_lora=False``, the base weights alone: what an engine that applies the adapter itself holds).

    Tensors are detached views of the live parameters except where a LoRA delta was added (a new tensor); consumers
    copy them (vLLM's loaders do) and must not keep them across an optimizer step.
    """
    base = covo_base(model)
    language_model = base.backbone
    lora = _lora_layers(language_model)
    for name, param in language_model.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue  # adapter factors (merged below) and the frozen copy behind a modules_to_save wrapper
        owner, _, leaf = name.rpartition(".")
        owner = owner.replace(".modules_to_save.default", "")
        tensor = param.detach()
        if owner.endswith(".base_layer") and owner[: -len(".base_layer")] in lora:
            owner = owner[: -len(".base_layer")]
            delta = _lora_delta(lora[owner], leaf) if merge_lora else None
            if delta is not None:
                tensor = tensor + delta.to(tensor.dtype)
        yield f"model.{owner}.{leaf}" if owner else f"model.{leaf}", tensor
    head = base.get_output_embeddings()
    if hasattr(head, "lora_A"):
        raise NotImplementedError("the LM head carries a LoRA adapter; grpo-audio keeps it plain")
    yield "lm_head.weight", head.weight.detach()


def backbone_config(model, dtype: torch.dtype | None = None) -> dict:
    """``config.json`` of the plain Qwen2 checkpoint: the model's text config (Covo-Audio's ``llm_config``, the Qwen
    families' ``text_config``) with the CausalLM architecture and ``dtype`` (default: the dtype of the model's LM
    head)."""
    base = covo_base(model)
    config = base.config.get_text_config().to_dict()  # Covo-Audio's llm_config, Qwen2-Audio's text_config
    config["dtype"] = str(dtype or base.get_output_embeddings().weight.dtype).removeprefix("torch.")
    config["architectures"] = [ARCHITECTURE]
    config["model_type"] = "qwen2"
    config["tie_word_embeddings"] = False  # Covo-Audio's LM head is untied; vLLM must load lm_head.weight
    config.pop("_name_or_path", None)
    for key in ("rope_parameters", "rope_scaling"):
        rope = config.get(key)
        if isinstance(rope, dict) and "mrope_section" in rope:
            # Qwen2.5-Omni's thinker: its multimodal RoPE gives a text-and-audio prompt the same position in all
            # three components, which is plain RoPE at that position (grpo_audio/model/qwen2_5_omni.py)
            config[key] = {k: v for k, v in rope.items() if k not in ("mrope_section", "mrope_interleaved")}
    return config


def export_backbone(
    model,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 4 * 1024**3,
    merge_lora: bool = True,
) -> Path:
    """Write the backbone as a ``Qwen2ForCausalLM`` checkpoint (config.json + safetensors shards) into ``out_dir``,
    in ``dtype`` (default: the model's); LoRA merged, or the base weights with ``merge_lora=False``.

    Shards hold at most ``max_shard_bytes`` each (one tensor larger than that gets a shard of its own); more than one
    shard gets the usual ``model.safetensors.index.json``. The directory is overwritten file by file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.safetensors"), out / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in backbone_weights(model, merge_lora):
        tensor = tensor.to(device="cpu", dtype=dtype or tensor.dtype).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / SINGLE_FILE), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / filename), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, filename))
        total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = backbone_config(model, dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def check_backbone_dir(path: str | Path, model) -> Path:
    """Raise ``BackboneDirError`` unless ``path`` holds a Qwen2ForCausalLM checkpoint shaped like ``model``'s backbone.

    Checks config.json (architecture and the shape fields) and that the safetensors files name exactly the
    parameters ``backbone_weights`` produces (tensor headers only; nothing is loaded).
    """
    root = Path(path)
    hint = "point rollout.vllm.backbone_dir at a directory written by export_backbone, or leave it null to export"
    if not root.is_dir():
        raise BackboneDirError(f"backbone directory {root} does not exist; {hint}")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise BackboneDirError(f"{root} has no config.json; {hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BackboneDirError(f"{config_file} is not valid JSON ({err}); {hint}") from err
    if ARCHITECTURE not in config.get("architectures", []):
        found = config.get("architectures")
        raise BackboneDirError(f"{config_file}: architectures {found} do not include {ARCHITECTURE}; {hint}")
    expected = backbone_config(model)
    wrong = {k: (config.get(k), expected[k]) for k in SHAPE_FIELDS if config.get(k) != expected[k]}
    if wrong:
        detail = ", ".join(f"{k}={got} (model: {want})" for k, (got, want) in wrong.items())
        raise BackboneDirError(f"{config_file} does not match the model's backbone: {detail}; {hint}")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise BackboneDirError(f"{root} has no *.safetensors weights; {hint}")
    names: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                names.update(fh.keys())
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise BackboneDirError(f"{file} is not a readable safetensors file ({err}); {hint}") from err
    wanted = {name for name, _ in backbone_weights(model)}
    missing, extra = sorted(wanted - names), sorted(names - wanted)
    if missing or extra:
        raise BackboneDirError(
            f"{root}: weights do not match the backbone (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}); {hint}"
        )
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m grpo_audio.rollout.backbone_export MODEL_DIR OUT_DIR``: write the backbone checkpoint that a vLLM
    server is started from (rollout.vllm.mode 'server')."""
    import argparse

    from grpo_audio.model.build import load_pretrained

    parser = argparse.ArgumentParser(description="Write an audio model's Qwen2 backbone as Qwen2ForCausalLM.")
    parser.add_argument(
        "model_dir",
        help="model directory of any family (Covo-Audio: released format or ours; the Qwen families: transformers')",
    )
    parser.add_argument("out_dir", help="where to write the Qwen2ForCausalLM checkpoint")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    args = parser.parse_args(argv)
    _, model = load_pretrained(Path(args.model_dir))  # its family from its config.json, checked as it loads
    out = export_backbone(model, args.out_dir, dtype=getattr(torch, args.dtype))
    say(f"wrote the Qwen2 backbone of {args.model_dir} ({args.dtype}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
