"""The recipe's model: built in process (``tiny``) or loaded from a checkpoint directory (``pretrained``), with its
trainable parts chosen (freezing, LoRA).

Training, evaluation, the benches and the sharded-run gather all build the model here, from the recipe's ``model``
section and the texts a tiny tokenizer is trained on; nothing here reads data files or knows about runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from grpo_audio.model.family import FAMILIES, checkpoint_family, family_for
from grpo_audio.model.tokenizer import IM_END
from grpo_audio.recipe.schema import ModelSection


def build_tokenizer_and_model(spec: ModelSection, seed: int, vocabulary_texts: Sequence[str] = ()):
    """``(tokenizer, model)`` for ``spec``, of its family (``grpo_audio.model.family``); the model's generation
    config stops at ``<|endoftext|>`` and ``<|im_end|>``.

    ``tiny``: a BPE tokenizer trained on ``vocabulary_texts`` (the prompt, questions and choices the run will
    render; ``grpo_audio.data.vocabulary.vocabulary_texts``) with the family's special tokens and chat template, and
    the family's model at tiny widths initialised from ``seed``; the same texts and seed give the same tokenizer and
    weights. ``pretrained``: the family's checked loader on ``spec.path`` (the texts are not used).
    """
    family = family_for(spec)
    if spec.source == "tiny":
        from grpo_audio.model.tiny import build_tiny_tokenizer, tiny_tokenizer_corpus

        corpus = tiny_tokenizer_corpus(list(vocabulary_texts))
        tokenizer = build_tiny_tokenizer(
            corpus, spec.tiny.text_vocab_size, family.audio_tokens, family.chat_template, family.other_tokens
        )
        model = family.build_tiny(spec.tiny, tokenizer, seed)
    else:
        tokenizer, model = family.load(Path(spec.path))
    family.check_tokens(tokenizer, spec.path or "tiny tokenizer")
    # a2t rollouts end at <|endoftext|>; <|im_end|> closes a chat turn: both stop a text-only rollout
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def load_pretrained(directory: Path):
    """``(tokenizer, model)`` from a checkpoint directory of any family (its ``config.json`` says which; Covo-Audio's
    checked loader, released layout or ours, when it names none): a bad directory is one ``CheckpointError``."""
    return FAMILIES[checkpoint_family(Path(directory)) or "covo_audio"].load(Path(directory))


def apply_freezing(model, spec: ModelSection) -> None:
    """Encoder and adapter train or not as ``spec`` says (the backbone's trainable part is LoRA's business); their
    modules are the family's (Covo-Audio: encoder, audio_adapter; Qwen2-Audio: audio_tower, multi_modal_projector;
    Qwen2.5-Omni's thinker: audio_tower and its final projection). A family's unused modules (Omni's vision tower)
    never train."""
    family = family_for(spec)
    model.get_submodule(family.encoder_module).requires_grad_(not spec.freeze_encoder)
    model.get_submodule(family.adapter_module).requires_grad_(not spec.freeze_adapter)  # after: it may lie inside
    for path in family.frozen_modules:
        model.get_submodule(path).requires_grad_(False)


def lora_config(spec: ModelSection):
    """peft's ``LoraConfig`` for ``spec.lora`` (None when the backbone trains fully).

    Adapters go on the named projections of the Qwen2 backbone only, never on the encoder or the LM head; an
    unfrozen adapter or encoder is trained in full and saved with the LoRA weights (``modules_to_save``).
    """
    if spec.lora is None:
        return None
    from peft import LoraConfig

    lora = spec.lora
    family = family_for(spec)
    # module paths in full: a bare last name ("proj") would also match the backbone's q_proj ...
    modules_to_save = [family.encoder_module] if not spec.freeze_encoder else []
    if not spec.freeze_adapter and not family.adapter_module.startswith(family.encoder_module + "."):
        modules_to_save.append(family.adapter_module)  # (an adapter inside a trained encoder goes with it)
    pattern = re.escape(family.backbone_module) + r"\..*\.(" + "|".join(lora.target_modules) + r")$"
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=pattern,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def model_holding(spec: ModelSection, seed: int, vocabulary_texts: Sequence[str], state: dict):
    """A fresh model of ``spec``'s architecture (and LoRA wrapping, so the names match) holding ``state``; every
    key must match. Used to rebuild a whole model from a sharded run's gathered state dict."""
    _, model = build_tokenizer_and_model(spec, seed, vocabulary_texts)
    config = lora_config(spec)
    if config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, config)
    model.load_state_dict(state, strict=True)
    return model
