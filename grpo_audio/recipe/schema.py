"""The recipe schema: one dataclass per section. Every field has help text and is read by the harness.

A recipe file (YAML) has the top-level sections ``model``, ``data``, ``prompt``, ``rewards``, ``rollout``,
``trainer`` and ``run``; all are optional and default to the embedded demo (tiny model, synthetic audio, CPU).
``trainer`` holds fields of TRL's ``GRPOConfig`` (validated against TRL's own field list), except the few that
another section owns (sampling lives in ``rollout``, the seed and output directory in ``run``, weights in
``rewards``), so that each setting has exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def _help(text: str, default: Any = None, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TinyModelSpec:
    """Shape of the in-process tiny Covo-Audio model (Whisper encoder + adapter + Qwen2), for CPU runs and tests."""

    hidden_size: int = _help("Qwen2 hidden size.", 64)
    num_layers: int = _help("Qwen2 decoder layers.", 2)
    num_heads: int = _help("Qwen2 attention heads.", 4)
    num_kv_heads: int = _help("Qwen2 key/value heads (GQA).", 2)
    intermediate_size: int = _help("Qwen2 MLP width.", 128)
    encoder_d_model: int = _help("Whisper encoder width.", 32)
    encoder_layers: int = _help("Whisper encoder layers.", 1)
    encoder_heads: int = _help("Whisper encoder attention heads.", 2)
    encoder_ffn_dim: int = _help("Whisper encoder MLP width.", 64)
    adapter_hidden_size: int = _help("Inner width of each adapter layer (2048 in the released model).", 64)
    text_vocab_size: int = _help("Byte-level BPE entries of the offline tokenizer (>= 256).", 384)
    speech_vocab_size: int = _help("Discrete speech-token ids after the text vocabulary (never sampled).", 32)


@dataclass
class LoraSpec:
    """LoRA on the Qwen2 backbone (peft). The LM head never carries an adapter (TRL's fused head needs it plain)."""

    r: int = _help("LoRA rank.", 8)
    alpha: int = _help("LoRA alpha (scale = alpha / r).", 32)
    dropout: float = _help("LoRA dropout.", 0.0)
    target_modules: list[str] = _help(
        "Backbone linear layers that get adapters.",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


@dataclass
class ModelSection:
    source: Literal["tiny", "pretrained"] = _help(
        "'tiny': build a tiny Covo-Audio model in process (deterministic from run.seed); 'pretrained': load the "
        "directory in model.path (a model this harness saved).",
        "tiny",
    )
    path: str | None = _help("Model directory for source 'pretrained'.", None)
    tiny: TinyModelSpec = _help("Tiny model shape (source 'tiny').", factory=TinyModelSpec)
    freeze_encoder: bool = _help("Keep the Whisper encoder frozen.", True)
    freeze_adapter: bool = _help(
        "Keep the audio adapter frozen. With encoder and adapter frozen, each clip's audio features are computed "
        "once per generation batch and reused by the rollout and every log-prob pass.",
        True,
    )
    lora: LoraSpec | None = _help("LoRA on the backbone; null trains the backbone fully.", None)


@dataclass
class SyntheticDataSpec:
    """A generated audio question set whose answers can only be known by listening."""

    num_questions: int = _help("Questions to generate (split evenly over the tasks).", 48)
    tasks: list[Literal["pitch", "count", "longer"]] = _help(
        "pitch: high or low tone; count: how many beeps; longer: which of two tones is longer.",
        factory=lambda: ["pitch", "count", "longer"],
    )


@dataclass
class DataSection:
    source: Literal["synthetic", "jsonl"] = _help(
        "'synthetic': generate WAV questions into the run directory; 'jsonl': read data.path.", "synthetic"
    )
    path: str | None = _help(
        "JSONL manifest (one object per line: id, audio, question, choices, answer); audio paths are relative to "
        "the manifest.",
        None,
    )
    synthetic: SyntheticDataSpec = _help("Synthetic set settings.", factory=SyntheticDataSpec)
    max_samples: int | None = _help("Use at most this many rows (in file order).", None)


@dataclass
class PromptSection:
    template: str = _help(
        "Prompt template name in prompts/ (file stem), or a path to a template YAML.", "audio_cot_v1"
    )


@dataclass
class RewardTermSection:
    name: str = _help("Registered reward name, or 'package.module:function'.", "accuracy")
    weight: float = _help("Weight w_i in R_total = sum_i w_i r_i; 0 logs the term without training on it.", 1.0)
    options: dict[str, Any] = _help("Keyword options of the reward function.", factory=dict)
    label: str | None = _help("Name the term is logged under (default: name).", None)


@dataclass
class RewardsSection:
    combiner: str = _help("How terms combine into R_total ('sum' is the Covo-Audio paper's).", "sum")
    terms: list[RewardTermSection] = _help(
        "Reward terms.",
        factory=lambda: [RewardTermSection("accuracy", 1.0), RewardTermSection("format", 1.0)],
    )


@dataclass
class RolloutSection:
    engine: Literal["hf"] = _help("Rollout engine: 'hf' (transformers generate).", "hf")
    num_generations: int = _help("G: completions sampled per prompt.", 4)
    temperature: float = _help("Sampling temperature.", 1.0)
    top_p: float = _help("Nucleus sampling mass (1.0 = off).", 1.0)
    top_k: int = _help("Top-k sampling (0 = off).", 0)
    max_completion_length: int = _help("Maximum tokens per completion.", 64)
    text_only: bool = _help("Never sample discrete speech tokens (ids >= config.audio_token_index).", True)


@dataclass
class RunSection:
    output_dir: str = _help("Run directory (relative paths are relative to the current directory).", "runs/demo")
    seed: int = _help("The one seed: data generation and order, tiny-model init and sampling derive from it.", 0)
    overwrite: bool = _help(
        "Replace an existing run directory. Only a directory that a previous run of this harness wrote is "
        "replaced; any other non-empty directory is refused.",
        False,
    )


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    rewards: RewardsSection = field(default_factory=RewardsSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    trainer: dict[str, Any] = field(default_factory=dict)
    run: RunSection = field(default_factory=RunSection)
    source_path: str | None = field(default=None, metadata={"help": "The recipe file (set by the loader)."})


# GRPOConfig fields that another section owns, and where to set them instead.
TRAINER_KEYS_OWNED_ELSEWHERE = {
    "num_generations": "rollout.num_generations",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
    "max_completion_length": "rollout.max_completion_length",
    "use_vllm": "rollout.engine",
    "output_dir": "run.output_dir",
    "seed": "run.seed",
    "data_seed": "run.seed",
    "reward_weights": "rewards.terms[].weight",
}
