"""Model families (``model.family``): what differs between the audio LLMs the harness trains, in one place.

* ``covo_audio``: ``CovoAudioForConditionalGeneration`` (this package); 24 kHz, every 30 s segment; the prompt
  carries ``<|begofcAUDIO|>`` + n x ``<|cAUDIO|>`` + ``<|endofcAUDIO|>`` before the user text;
* ``qwen2_audio``: ``Qwen2AudioPolicy`` (transformers' ``Qwen2AudioForConditionalGeneration``); 16 kHz, the first
  30 s; the chat template's audio part renders ``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n`` and
  ``<|AUDIO|>`` is repeated n times, as its processor does;
* ``qwen2_5_omni_thinker``: ``OmniThinkerPolicy`` (transformers' ``Qwen2_5OmniThinkerForConditionalGeneration``);
  the same front end; the audio part renders ``<|audio_bos|><|AUDIO|><|audio_eos|>``; its vision tower never trains
  and its vision tokens are never sampled.

Each policy model has the same contract (forward with ``logprob_labels``/``sampling``/``packed_lengths``,
``prompt_embeddings``, ``clip_audio_embeds``, ``audio_modules``, ``backbone`` and ``lm_head``), so the
trainer and the engines do not ask which family they hold. A family gives what is needed around the model: its audio
front end (``grpo_audio.audio.front_ends``), its audio tokens and prompt layout, its chat template for the tiny
tokenizer, the names of its audio modules (``freeze_encoder``, ``freeze_adapter``), the tiny model builder and the
checkpoint loader. ``family_for`` reads ``model.family`` or, when it is null, the checkpoint's ``config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_audio.audio.front_ends import FRONT_ENDS, AudioFrontEnd
from grpo_audio.model import qwen2_5_omni as qwen2_5_omni_model
from grpo_audio.model import qwen2_audio as qwen2_audio_model
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS, CHATML_TEMPLATE, ENDOFTEXT, IM_END, IM_START


class FamilyError(ValueError):
    """A model directory of no known family, or one that is not the family the recipe names."""


@dataclass(frozen=True)
class ModelFamily:
    name: str
    title: str
    front_end: AudioFrontEnd
    audio_tokens: tuple[str, str, str]  # (begin, placeholder, end)
    chat_template: str  # the layout the tiny tokenizer gets (and a checkpoint's tokenizer without one)
    audio_in_content_list: bool  # the chat template renders an audio part (else the audio block is inline text)
    encoder_module: str  # the policy's audio encoder, a module path in it (model.freeze_encoder)
    adapter_module: str  # what maps encoder frames to the backbone's width (model.freeze_adapter)
    backbone_module: str  # the text model the spliced embeddings go through (LoRA's targets are in it)
    build_tiny: Callable[[Any, Any, int], Any]  # (TinyModelSpec, tokenizer, seed) -> model
    load: Callable[[Path], tuple[Any, Any]]  # directory -> (tokenizer, model)
    policy_class: Callable[[], type]  # the policy model class (imported when asked for)
    other_tokens: tuple[str, ...] = ()  # other prompt-only special tokens (Omni's vision tokens): never sampled
    frozen_modules: tuple[str, ...] = ()  # module paths that never train (Omni's vision tower)

    @property
    def prompt_only_tokens(self) -> tuple[str, ...]:
        """The special tokens only a prompt carries: the text-only mask bans them."""
        return (*self.audio_tokens, *self.other_tokens)

    @property
    def placeholder(self) -> str:
        return self.audio_tokens[1]

    @property
    def required_tokens(self) -> tuple[str, ...]:
        return (ENDOFTEXT, IM_START, IM_END, *self.audio_tokens, *self.other_tokens)

    def check_tokens(self, tokenizer, source: str) -> dict[str, int]:
        """Ids of the tokens the harness relies on; a tokenizer lacking one is rejected naming ``source``."""
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.required_tokens if t not in vocab]
        if missing:
            raise ValueError(f"{source}: tokenizer lacks the {self.title} special token(s) {missing}")
        return {t: vocab[t] for t in self.required_tokens}

    def audio_block(self, n_placeholders: int) -> str:
        begin, placeholder, end = self.audio_tokens
        return begin + placeholder * n_placeholders + end


def _build_tiny_covo(spec, tokenizer, seed: int):
    from grpo_audio.model.tiny import build_tiny_model

    return build_tiny_model(spec, tokenizer, seed)


def _covo_policy() -> type:
    from grpo_audio.model.modeling import CovoAudioForConditionalGeneration

    return CovoAudioForConditionalGeneration


def _load_covo(directory: Path):
    from grpo_audio.model.checkpoint_load import load_covo_checkpoint

    model, tokenizer = load_covo_checkpoint(directory)
    return tokenizer, model


# Qwen2.5-Omni's full checkpoint (thinker, talker, vocoder): its config.json model_type, and the pickle it ships that
# holds no weights the harness reads (the talker's speakers; never opened)
FULL_OMNI_TYPE = "qwen2_5_omni"
FULL_OMNI_PICKLES = frozenset({"spk_dict.pt"})


def _transformers_loader(policy_class: Callable[[], type], title: str) -> Callable[[Path], tuple[Any, Any]]:
    """A loader of a checkpoint in transformers' layout for ``policy_class()``: pickles refused unopened, the
    tokenizer and the model read with transformers, any failure one ``CheckpointError`` naming the directory.

    The thinker also loads out of a full Qwen2.5-Omni directory (transformers strips the ``thinker.`` prefix of its
    weights and takes its ``thinker_config``); the model then remembers the directory (``full_omni_source``), and
    saving writes a full Qwen2.5-Omni directory back with the trained thinker in place
    (``grpo_audio.model.checkpoint_save.save_transformers_checkpoint``)."""

    def load(directory: Path):
        from transformers import AutoTokenizer

        from grpo_audio.model.checkpoint_load import CheckpointError, refuse_pickles

        full_omni = _model_type(directory) == FULL_OMNI_TYPE
        refuse_pickles(directory, FULL_OMNI_PICKLES if full_omni else frozenset())
        check_feature_extractor(directory)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model = policy_class().from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{directory}: cannot load a {title} checkpoint ({err})") from err
        if full_omni:
            model.full_omni_source = Path(directory)
        return tokenizer, model.eval()

    return load


# The front end the Qwen families share (grpo_audio.audio.qwen2_audio): preprocessor_config.json fields it fixes
WHISPER_WINDOW = {"feature_size": 128, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "n_samples": 480000}


def check_feature_extractor(directory: Path) -> None:
    """A checkpoint whose ``preprocessor_config.json`` asks for another log-mel than the harness's front end computes
    (128 bins of 16 kHz audio, 10 ms hops, a 30 s window) is refused, naming the field: its processor would feed the
    model other features than training would. Without the file, the front end's are taken as the model's."""
    from grpo_audio.model.checkpoint_load import CheckpointError

    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    for key, expected in WHISPER_WINDOW.items():
        if key in config and config[key] != expected:
            raise CheckpointError(
                f"{path}: {key} is {config[key]!r}; the harness's audio front end computes {expected!r} "
                "(grpo_audio/audio/qwen2_audio.py), so this model would be trained on other features than its "
                "processor gives it"
            )


def _omni_policy() -> type:
    from grpo_audio.model.qwen2_5_omni import OmniThinkerPolicy

    return OmniThinkerPolicy


def _build_tiny_omni(spec, tokenizer, seed: int):
    from grpo_audio.model.qwen2_5_omni import build_tiny_omni_thinker

    return build_tiny_omni_thinker(spec, tokenizer, seed)


FAMILIES = {
    "covo_audio": ModelFamily(
        name="covo_audio",
        title="Covo-Audio",
        front_end=FRONT_ENDS["covo_audio"],
        audio_tokens=AUDIO_SPECIAL_TOKENS,
        chat_template=CHATML_TEMPLATE,
        audio_in_content_list=False,
        encoder_module="model.encoder",
        adapter_module="model.audio_adapter",
        backbone_module="model.language_model",
        build_tiny=_build_tiny_covo,
        load=_load_covo,
        policy_class=_covo_policy,
    ),
    "qwen2_audio": ModelFamily(
        name="qwen2_audio",
        title="Qwen2-Audio",
        front_end=FRONT_ENDS["qwen2_audio"],
        audio_tokens=qwen2_audio_model.AUDIO_SPECIAL_TOKENS,
        chat_template=qwen2_audio_model.CHAT_TEMPLATE,
        audio_in_content_list=True,
        encoder_module="model.audio_tower",
        adapter_module="model.multi_modal_projector",
        backbone_module="model.language_model",
        build_tiny=qwen2_audio_model.build_tiny_qwen2_audio,
        load=_transformers_loader(lambda: qwen2_audio_model.Qwen2AudioPolicy, "Qwen2-Audio"),
        policy_class=lambda: qwen2_audio_model.Qwen2AudioPolicy,
    ),
    "qwen2_5_omni_thinker": ModelFamily(
        name="qwen2_5_omni_thinker",
        title="Qwen2.5-Omni thinker",
        front_end=FRONT_ENDS["qwen2_audio"],  # the same 16 kHz Whisper window and placeholder count
        audio_tokens=qwen2_5_omni_model.AUDIO_SPECIAL_TOKENS,
        chat_template=qwen2_5_omni_model.CHAT_TEMPLATE,
        audio_in_content_list=True,
        encoder_module="audio_tower",
        adapter_module="audio_tower.proj",
        backbone_module="model",
        build_tiny=_build_tiny_omni,
        load=_transformers_loader(_omni_policy, "Qwen2.5-Omni thinker"),
        policy_class=_omni_policy,
        other_tokens=qwen2_5_omni_model.VISION_TOKENS,
        frozen_modules=("visual",),
    ),
}
COVO_AUDIO = FAMILIES["covo_audio"]
# config.json model_type -> family
# config.json model_type -> family: each family's own name, and the full Qwen2.5-Omni, whose thinker trains
MODEL_TYPES = {**{name: name for name in FAMILIES}, FULL_OMNI_TYPE: "qwen2_5_omni_thinker"}


def _model_type(directory: Path) -> str | None:
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_family(directory: Path) -> str | None:
    """The family of a checkpoint directory from its ``config.json`` ``model_type`` (a released Covo-Audio directory
    has one too); None when the file is missing, unreadable or names no family: the loader of the family then
    used (Covo-Audio's by default) says what is wrong, naming the file."""
    return MODEL_TYPES.get(_model_type(directory))


def family_for(spec) -> ModelFamily:
    """The family of the recipe's ``model`` section: ``model.family``, else the checkpoint's (pretrained) or
    Covo-Audio. A pretrained directory of another known family than the one named is an error."""
    named = getattr(spec, "family", None)
    found = checkpoint_family(Path(spec.path)) if spec.source == "pretrained" and spec.path else None
    if named is not None and found is not None and named != found:
        raise FamilyError(f"model.family is {named!r} but {spec.path} holds a {found!r} checkpoint")
    return FAMILIES[named or found or "covo_audio"]


def family_of_model(model) -> ModelFamily:
    """The family of a built policy model (possibly PEFT- or accelerate-wrapped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)
    model_type = getattr(base.config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise FamilyError(f"model of type {model_type!r} is not a family the harness trains")
    return FAMILIES[MODEL_TYPES[model_type]]


__all__ = [
    "COVO_AUDIO",
    "FAMILIES",
    "FamilyError",
    "ModelFamily",
    "checkpoint_family",
    "family_for",
    "family_of_model",
]
