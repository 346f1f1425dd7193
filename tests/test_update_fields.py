"""No TRL default moves the update silently.

Every field of TRL's ``GRPOConfig`` (transformers' ``TrainingArguments`` included) is classified here, either in
``UPDATE_FIELDS`` (it changes the loss, the advantage, the KL, the importance weights, the sampling, the batch, or the
optimizer step and its schedule; one line each says why) or in ``NOT_UPDATE`` (logging, saving, the hub, devices and
sharding, speed, evaluation, TRL machinery the harness replaces). A TRL or transformers release that adds a field
fails ``test_every_grpo_config_field_is_classified`` until someone decides which it is: that is how a new loss knob
with a default of its own cannot slip in unnoticed.

The recipes that claim a source (``configs/covo_audio_avqa.yaml``, ``configs/r1_aqa_qwen2_audio.yaml``,
``configs/audio_thinker_qwen2_5_omni.yaml``) must pin every update field in their own text: the YAML file as
written, not the resolved recipe (whose unset keys are filled with defaults), and not the harness's
``TRAINER_DEFAULTS`` either. A field is pinned when the recipe's ``trainer`` section gives it (``null`` included: an
explicit "off"), or, for a field another section owns (``TRAINER_KEYS_OWNED_ELSEWHERE``: sampling, G, the seed,
reward weights), when that section gives it. Two exceptions:

* a field the loader refuses (``TRAINER_KEYS_REFUSED``): the rollout engines never read TRL's value;
* a field in ``INERT_WHILE``: it acts only through a feature the recipe keeps off, and the recipe pins that switch
  itself (e.g. the SAPO temperatures while ``loss_type`` is pinned to something other than 'sapo').
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grpo_audio.recipe import load_recipe
from grpo_audio.recipe.loader import generation_batch_size, grpo_config_fields
from grpo_audio.recipe.schema import TRAINER_KEYS_OWNED_ELSEWHERE, TRAINER_KEYS_REFUSED
from grpo_audio.recipe.yaml_loader import load_yaml
from grpo_audio.resources import shipped_dir
from grpo_audio.train.build import TRAINER_DEFAULTS

AVQA = shipped_dir("configs") / "covo_audio_avqa.yaml"
R1_AQA = shipped_dir("configs") / "r1_aqa_qwen2_audio.yaml"
AUDIO_THINKER = shipped_dir("configs") / "audio_thinker_qwen2_5_omni.yaml"
SOURCED_RECIPES = [
    AVQA,
    R1_AQA,
    AUDIO_THINKER,
]  # recipes that claim a source: every update field pinned in their own text

# GRPOConfig fields that change the update: field -> why.
UPDATE_FIELDS = {
    # what one optimizer step is made of
    "per_device_train_batch_size": "completions per process per micro-step: x processes x accumulation = per step",
    "gradient_accumulation_steps": "micro-steps per optimizer step: the completions each step averages over",
    "steps_per_generation": "micro-steps fed by one generation batch: above the accumulation, later steps go stale",
    "generation_batch_size": "completions generated at once: the other way to set steps_per_generation",
    "num_generations": "G, completions per prompt: the group each advantage is taken over",
    "num_iterations": "mu, updates per generation batch: above 1 the ratio moves and the clip acts",
    "shuffle_dataset": "whether prompts come in a random order: which prompts share a step",
    "seed": "the sampling's random draws and the prompt order",
    "data_seed": "the prompt order (the seed when unset)",
    "auto_find_batch_size": "halves the per-device batch after an out-of-memory error: fewer completions per step",
    # the optimizer and its schedule
    "max_steps": "the run's length and the span of the learning-rate schedule",
    "num_train_epochs": "the run's length when max_steps is -1",
    "learning_rate": "the step size",
    "lr_scheduler_type": "the learning rate's course over the run",
    "lr_scheduler_kwargs": "the learning-rate schedule's parameters (cycles, floor, ...)",
    "warmup_steps": "the schedule's ramp up from 0",
    "optim": "the optimizer's update rule",
    "optim_args": "extra arguments that some optimizers read",
    "optim_target_modules": "the modules that GaLore-like optimizers project",
    "adam_beta1": "AdamW's first-moment decay",
    "adam_beta2": "AdamW's second-moment decay",
    "adam_epsilon": "AdamW's denominator floor",
    "weight_decay": "the decoupled weight decay of each step",
    "max_grad_norm": "the gradient clipping before each step",
    # numerics of the log-probs and gradients
    "bf16": "bf16 mixed precision",
    "fp16": "fp16 mixed precision with loss scaling",
    "tf32": "TF32 matmuls in place of float32 ones",
    "cast_lm_head_to_fp32": "the LM head, and so every log-prob, in float32",
    "disable_dropout": "zeroes every dropout of the policy and the reference",
    "neftune_noise_alpha": "noise on the input embeddings while training (NEFTune): the log-prob passes see it too",
    # sampling (the log-prob passes score the completions under the same distribution)
    "temperature": "the sampling temperature, and the distribution the log-probs are scored under",
    "top_p": "the nucleus cut of the sampling distribution",
    "top_k": "the top-k cut of the sampling distribution",
    "min_p": "a min-p cut of the sampling distribution",
    "repetition_penalty": "penalises tokens already generated",
    "generation_kwargs": "any other generation setting",
    "max_completion_length": "a completion's token budget (and Dr. GRPO's normaliser)",
    "use_vllm": "TRL applies its vLLM importance-sampling correction only when set",
    # the advantage
    "scale_rewards": "the advantage's denominator: group std, batch std or none",
    "multi_objective_aggregation": "sum the rewards then normalise, or normalise each, sum, and normalise the batch",
    "reward_weights": "the reward functions' weights in the sum",
    # the policy loss
    "loss_type": "how per-token terms are aggregated, and which surrogate (clipped, soft, CISPO, VESPO)",
    "importance_sampling_level": "a ratio per token (GRPO) or one per sequence (GSPO)",
    "epsilon": "the ratio's lower clip (and the upper one unless epsilon_high is set)",
    "epsilon_high": "the ratio's upper clip (DAPO's clip-higher, CISPO's cap)",
    "delta": "an upper bound on the unclipped ratio (INTELLECT-2's two-sided clip)",
    "mask_truncated_completions": "drops completions cut at max_completion_length from the loss",
    "top_entropy_quantile": "keeps only the highest-entropy share of tokens in the loss",
    "off_policy_mask_threshold": "masks negative-advantage sequences that drifted from the sampler (DeepSeek-V3.2)",
    "entropy_coef": "the weight of an entropy bonus in the loss",
    "use_adaptive_entropy": "adapts the entropy bonus's weight every step, up from 0 even when entropy_coef is 0",
    "entropy_coef_min": "the lower bound of the adapted entropy weight",
    "entropy_coef_max": "the upper bound of the adapted entropy weight",
    "entropy_coef_delta": "the step of the adapted entropy weight",
    "entropy_target": "the entropy at or below which the adapted entropy bonus applies",
    "sapo_temperature_neg": "SAPO's soft-gate temperature for non-positive advantages",
    "sapo_temperature_pos": "SAPO's soft-gate temperature for positive advantages",
    "vespo_k_pos": "VESPO's power exponent for positive advantages",
    "vespo_lambda_pos": "VESPO's decay for positive advantages",
    "vespo_k_neg": "VESPO's power exponent for negative advantages",
    "vespo_lambda_neg": "VESPO's decay for negative advantages",
    "router_aux_loss_coef": "the weight of a Mixture-of-Experts load-balancing loss added to the loss",
    # the KL
    "beta": "the KL coefficient",
    "use_bias_correction_kl": "multiplies the per-token KL by the ratio: another KL gradient, even on-policy",
    "sync_ref_model": "moves the KL reference towards the policy during the run (TR-DPO)",
    "ref_model_mixup_alpha": "how far each reference refresh moves it towards the policy",
    "ref_model_sync_steps": "the optimizer steps between reference refreshes",
    # importance weights of vLLM rollouts (the harness's vLLM engine turns TRL's correction on)
    "vllm_importance_sampling_correction": "weights each vLLM-sampled completion's loss by the trainer/engine ratio",
    "vllm_importance_sampling_mode": "the vLLM correction's ratio per token or per sequence, clipped or masked",
    "vllm_importance_sampling_clip_max": "the upper bound of the vLLM correction's ratio",
    "vllm_importance_sampling_clip_min": "the lower bound of the vLLM correction's ratio",
    "vllm_importance_sampling_cap": "a deprecated alias of vllm_importance_sampling_clip_max, which replaces it",
}

# GRPOConfig fields that do not change the update. Grouped; a comment says why where it is not plain.
NOT_UPDATE = frozenset(
    {
        # where the run goes and what it records
        "output_dir",
        "logging_strategy",
        "logging_steps",
        "logging_first_step",
        "log_on_each_node",
        "logging_nan_inf_filter",
        "include_num_input_tokens_seen",
        "log_level",
        "log_level_replica",
        "disable_tqdm",
        "report_to",
        "run_name",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        "skip_memory_metrics",
        "debug",
        "log_completions",
        "log_multimodal",
        "num_completions_to_print",
        "log_unique_prompts",
        "log_completions_hub_repo",
        # checkpoints, resuming and the hub
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "save_only_model",
        "save_on_each_node",
        "enable_jit_checkpoint",
        "load_best_model_at_end",
        "metric_for_best_model",
        "greater_is_better",
        "restore_callback_states_from_checkpoint",
        "ignore_data_skip",  # only a resume reads it; a resumed step equals the uninterrupted one (test_resume.py)
        "resume_from_checkpoint",
        "push_to_hub",
        "hub_token",
        "hub_private_repo",
        "hub_model_id",
        "hub_strategy",
        "hub_always_push",
        "hub_revision",
        # evaluation (the harness's own held-out evaluation is the recipe's eval section)
        "eval_strategy",
        "eval_steps",
        "eval_delay",
        "eval_on_start",
        "eval_do_concat_batches",
        "eval_use_gather_object",
        "eval_accumulation_steps",
        "per_device_eval_batch_size",
        "prediction_loss_only",
        "include_for_metrics",
        "batch_eval_metrics",
        "bf16_full_eval",
        "fp16_full_eval",
        "num_generations_eval",
        "do_train",
        "do_eval",
        "do_predict",
        # devices, processes and sharding: the same update spread over devices (test_scale_out.py compares them)
        "use_cpu",
        "local_rank",
        "accelerator_config",
        "parallelism_config",
        "ddp_find_unused_parameters",
        "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers",
        "ddp_static_graph",
        "ddp_backend",
        "ddp_timeout",
        "fsdp",
        "fsdp_config",
        "deepspeed",
        "ds3_gather_for_generation",  # whether ZeRO-3 gathers the weights for generation: memory, not values
        # speed and memory: the same values computed another way
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "torch_compile",
        "torch_compile_backend",
        "torch_compile_mode",
        "use_liger_kernel",  # Liger's kernels for the same layers; TRL 1.16 refuses its fused cross-entropy here
        "liger_kernel_config",
        "use_cache",
        "torch_empty_cache_steps",
        "full_determinism",
        "pad_to_multiple_of",  # padding is masked out of every loss term
        # loading the data (TRL's RepeatSampler orders it and yields only whole generation batches)
        "remove_unused_columns",
        "label_names",
        "length_column_name",
        "train_sampling_strategy",  # transformers' sampler choice: GRPOTrainer replaces the sampler
        "dataloader_drop_last",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "dataloader_in_order",
        # transformers' loss machinery, which GRPOTrainer's own compute_loss bypasses
        "label_smoothing_factor",
        "average_tokens_across_devices",
        # loading a model from a name: the harness passes a built model
        "model_init_kwargs",
        "trust_remote_code",
        # TRL's own generation, which the harness's rollout engines replace
        "chat_template_kwargs",  # prompts reach TRL as text the prompt template already laid out
        "cache_implementation",  # also refused by the loader
        "max_tool_calling_iterations",  # no tools
        "use_transformers_continuous_batching",
        "transformers_continuous_batching_config",
        "use_transformers_paged",
        # TRL's own vLLM engine, never built (args.use_vllm stays False; the harness's engine is configured in rollout)
        "vllm_mode",
        "vllm_model_impl",
        "vllm_enable_sleep_mode",
        "vllm_structured_outputs_regex",
        "vllm_server_base_url",
        "vllm_server_host",
        "vllm_server_port",
        "vllm_server_timeout",
        "vllm_group_port",
        "vllm_gpu_memory_utilization",
        "vllm_max_model_length",
        "vllm_tensor_parallel_size",
    }
)


def _pinned(key: str, holds: Callable[[Any], bool]) -> Callable[[dict], bool]:
    """A condition on the YAML's trainer section that holds only when ``key`` is written there."""
    return lambda trainer: key in trainer and holds(trainer[key])


_NOT_SAPO = ("loss_type is not 'sapo'", _pinned("loss_type", lambda v: v != "sapo"))
_NOT_VESPO = ("loss_type is not 'vespo'", _pinned("loss_type", lambda v: v != "vespo"))
_NO_ADAPTIVE_ENTROPY = ("use_adaptive_entropy is false", _pinned("use_adaptive_entropy", lambda v: v is False))
_NO_REF_SYNC = ("sync_ref_model is false", _pinned("sync_ref_model", lambda v: v is False))
_ADAMW = (
    "optim is PyTorch's AdamW (adamw_torch or adamw_torch_fused), which reads neither",
    _pinned("optim", lambda v: v in ("adamw_torch", "adamw_torch_fused")),
)

# Update fields that act only through a feature the recipe can keep off: field -> (the condition, as text; whether the
# YAML's trainer section pins that condition).
INERT_WHILE: dict[str, tuple[str, Callable[[dict], bool]]] = {
    "num_train_epochs": ("max_steps is at least 1", _pinned("max_steps", lambda v: v >= 1)),
    "lr_scheduler_kwargs": (
        "lr_scheduler_type is 'linear', which takes none",
        _pinned("lr_scheduler_type", lambda v: v == "linear"),
    ),
    "optim_args": _ADAMW,
    "optim_target_modules": _ADAMW,
    "fp16": ("bf16 is true (transformers refuses both)", _pinned("bf16", lambda v: v is True)),
    "sapo_temperature_neg": _NOT_SAPO,
    "sapo_temperature_pos": _NOT_SAPO,
    "vespo_k_pos": _NOT_VESPO,
    "vespo_lambda_pos": _NOT_VESPO,
    "vespo_k_neg": _NOT_VESPO,
    "vespo_lambda_neg": _NOT_VESPO,
    "entropy_coef_min": _NO_ADAPTIVE_ENTROPY,
    "entropy_coef_max": _NO_ADAPTIVE_ENTROPY,
    "entropy_coef_delta": _NO_ADAPTIVE_ENTROPY,
    "entropy_target": _NO_ADAPTIVE_ENTROPY,
    "ref_model_mixup_alpha": _NO_REF_SYNC,
    "ref_model_sync_steps": _NO_REF_SYNC,
    "vllm_importance_sampling_cap": (
        "vllm_importance_sampling_clip_max is written out (the alias is unset)",
        _pinned("vllm_importance_sampling_clip_max", lambda v: True),
    ),
}


def classification_gaps(field_names: set[str]) -> tuple[set[str], set[str]]:
    """(fields neither list holds, names in the lists that are no field) for a GRPOConfig with ``field_names``."""
    classified = set(UPDATE_FIELDS) | NOT_UPDATE
    return field_names - classified, classified - field_names


def _sets(node: Any, path: str) -> bool:
    """Whether the parsed YAML ``node`` writes out the dotted ``path``; ``name[]`` means every item of a list."""
    head, _, rest = path.partition(".")
    key = head.removesuffix("[]")
    if not isinstance(node, dict) or key not in node:
        return False
    if head.endswith("[]"):
        items = node[key]
        return bool(items) and all(_sets(item, rest) for item in items)
    return not rest or _sets(node[key], rest)


def unpinned_update_fields(recipe: dict) -> dict[str, str]:
    """The update fields the recipe ``recipe`` (a YAML file as parsed, before any default fills it) leaves to a
    default: the YAML path to write -> why it matters."""
    trainer = recipe.get("trainer") or {}
    missing = {}
    for name, why in UPDATE_FIELDS.items():
        if name in TRAINER_KEYS_REFUSED:
            continue  # the loader refuses the key, and the rollout engines never read TRL's value
        if name in TRAINER_KEYS_OWNED_ELSEWHERE:
            path = TRAINER_KEYS_OWNED_ELSEWHERE[name]
            if not _sets(recipe, path):  # seed and data_seed share run.seed: one entry naming both
                missing[path] = "; ".join(filter(None, [missing.get(path), f"{why} (GRPOConfig.{name})"]))
            continue
        if name in trainer:
            continue
        if name in INERT_WHILE:
            condition, holds = INERT_WHILE[name]
            if holds(trainer):
                continue
            why = f"{why} (inert only while the recipe pins that {condition})"
        missing[f"trainer.{name}"] = why
    return missing


def _avqa_yaml(path: Path = AVQA) -> dict:
    return load_yaml(path.read_text(encoding="utf-8"))  # the recipe loader's YAML 1.2 reading


def test_every_grpo_config_field_is_classified():
    unclassified, stale = classification_gaps(set(grpo_config_fields()))
    assert not unclassified, (
        f"GRPOConfig fields in neither UPDATE_FIELDS nor NOT_UPDATE (a TRL or transformers upgrade added them): "
        f"{sorted(unclassified)}. Decide for each whether it changes the update; if it does, pin it in "
        f"{AVQA.name} with its source or reason."
    )
    assert not stale, f"listed here but no longer GRPOConfig fields: {sorted(stale)}"
    assert not set(UPDATE_FIELDS) & NOT_UPDATE, sorted(set(UPDATE_FIELDS) & NOT_UPDATE)


def test_inert_declarations_are_update_fields_the_trainer_section_owns():
    assert set(INERT_WHILE) <= set(UPDATE_FIELDS)
    # an inert field is checked against the trainer section: one owned by another section would never be looked at
    assert not set(INERT_WHILE) & (set(TRAINER_KEYS_OWNED_ELSEWHERE) | set(TRAINER_KEYS_REFUSED))


def test_a_new_trl_field_or_a_removed_one_is_caught():
    fields = set(grpo_config_fields())
    assert classification_gaps(fields | {"new_loss_knob"}) == ({"new_loss_knob"}, set())
    assert classification_gaps(fields - {"beta"}) == (set(), {"beta"})


@pytest.mark.parametrize("recipe_path", SOURCED_RECIPES, ids=lambda p: p.name)
def test_sourced_recipes_pin_every_update_field(recipe_path):
    missing = unpinned_update_fields(_avqa_yaml(recipe_path))
    lines = "\n".join(f"  {path}: {why}" for path, why in sorted(missing.items()))
    assert not missing, f"{recipe_path.name} leaves {len(missing)} update field(s) to a default:\n{lines}"


def _without(path: str) -> Callable[[dict], None]:
    section, key = path.split(".")
    return lambda data: data[section].pop(key)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # beta is also one of the harness's TRAINER_DEFAULTS: a harness default does not pin it for the recipe
        (_without("trainer.beta"), {"trainer.beta"}),
        (_without("trainer.use_bias_correction_kl"), {"trainer.use_bias_correction_kl"}),
        (_without("rollout.temperature"), {"rollout.temperature"}),
        (lambda data: data["rewards"]["terms"][1].pop("weight"), {"rewards.terms[].weight"}),
        (
            lambda data: data["trainer"].update(loss_type="sapo"),
            {"trainer.sapo_temperature_neg", "trainer.sapo_temperature_pos"},
        ),
        (
            _without("trainer.use_adaptive_entropy"),
            {
                "trainer.use_adaptive_entropy",
                "trainer.entropy_coef_min",
                "trainer.entropy_coef_max",
                "trainer.entropy_coef_delta",
                "trainer.entropy_target",
            },
        ),
    ],
    ids=["beta", "bias_correction_kl", "temperature", "reward_weight", "sapo", "adaptive_entropy"],
)
def test_a_recipe_leaving_a_field_to_a_default_is_caught(change, expected):
    assert "beta" in TRAINER_DEFAULTS  # what the first case relies on
    data = _avqa_yaml()
    change(data)
    missing = unpinned_update_fields(data)
    assert set(missing) == expected
    assert all(missing[path] for path in expected)  # each names why it matters
    if "trainer.beta" in missing:
        assert missing["trainer.beta"] == UPDATE_FIELDS["beta"]


def _stand_in_paths(tmp_path: Path) -> list[str]:
    """The recipe names a downloaded checkpoint and AVQA: empty stand-ins let it load here."""
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "audio").mkdir()
    (tmp_path / "train.json").write_text("[]")
    return [
        f"model.path={tmp_path / 'checkpoint'}",
        f"data.path={tmp_path / 'train.json'}",
        f"data.root={tmp_path / 'audio'}",
    ]


def test_avqa_batch_is_the_sources_and_trl_keeps_every_pinned_value(tmp_path, monkeypatch):
    """Audio-Thinker and R1-AQA: 1 per GPU x accumulation 2 x 8 GPUs = 16 completions = 2 prompts x 8 per step."""
    from grpo_audio.train.build import grpo_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process, as the recipe's arithmetic says
    recipe = load_recipe(AVQA, _stand_in_paths(tmp_path))
    trainer = recipe.trainer
    completions_per_step = trainer["per_device_train_batch_size"] * 1 * trainer["gradient_accumulation_steps"]
    assert completions_per_step == 16 and recipe.rollout.num_generations == 8  # 2 prompts x 8
    assert generation_batch_size(recipe) == 16  # generated at once

    args = grpo_config(recipe, tmp_path / "run")
    # one generation batch per optimizer step: every completion is sampled from the weights before its step
    assert args.generation_batch_size == 16 and args.steps_per_generation == args.gradient_accumulation_steps
    changed = {
        key: (value, getattr(args, key))
        for key, value in trainer.items()
        if key != "generation_batch_size" and getattr(args, key) != value  # derived by TRL from the line above
    }
    assert not changed, f"GRPOConfig did not keep the recipe's values (recipe, GRPOConfig): {changed}"
    assert args.use_bias_correction_kl is False and args.beta == 0.04


def test_r1_aqa_recipe_is_r1_aqas_setting_and_trl_keeps_every_pinned_value(tmp_path, monkeypatch):
    """R1-AQA (arXiv 2503.11197): Qwen2-Audio, full fine-tuning with the audio encoder, accuracy + format, G 8,
    lr 1e-6, beta 0.04, T 1.0, 256 new tokens, the per-sequence 'grpo' loss, 16 completions per step, 1000 steps,
    seed 42, MMAU test-mini every 100 steps; and GRPOConfig keeps every value."""
    from grpo_audio.train.build import grpo_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recipe = load_recipe(R1_AQA, _stand_in_paths(tmp_path))
    model, trainer, rollout = recipe.model, recipe.trainer, recipe.rollout
    assert model.family == "qwen2_audio" and model.lora is None
    assert not model.freeze_encoder and not model.freeze_adapter
    assert [(t.name, t.weight) for t in recipe.rewards.terms] == [("accuracy", 1.0), ("format", 1.0)]
    assert recipe.rewards.combiner == "sum" and recipe.prompt.template == "r1_aqa_v1"
    assert (rollout.num_generations, rollout.temperature, rollout.max_completion_length) == (8, 1.0, 256)
    assert (trainer["learning_rate"], trainer["beta"], trainer["loss_type"]) == (1e-6, 0.04, "grpo")
    assert trainer["max_steps"] == 1000 and trainer["save_steps"] == 100 and recipe.run.seed == 42
    assert trainer["per_device_train_batch_size"] * trainer["gradient_accumulation_steps"] == 16
    assert [s.source for s in recipe.eval.sets] == ["mmau"] and recipe.eval.every_steps == 100
    args = grpo_config(recipe, tmp_path / "run")
    changed = {
        key: (value, getattr(args, key))
        for key, value in trainer.items()
        if key != "generation_batch_size" and getattr(args, key) != value
    }
    assert not changed, f"GRPOConfig did not keep the recipe's values (recipe, GRPOConfig): {changed}"


def test_r1_aqa_prompt_is_r1_aqas_text():
    """R1-AQA's prompt: the question, the choices as a Python list, the answer asked for in <answer> </answer>."""
    from grpo_audio.data.prompting import load_template

    template = load_template("r1_aqa_v1")
    text = template.user_text("What is the man doing?", ["Singing", "Talking", "Laughing"])
    choices = ["Singing", "Talking", "Laughing"]
    assert text == (
        f"What is the man doing? Please choose the answer from the following options: {choices}. "
        "Output the final answer in <answer> </answer>."
    )
    assert template.system == ""


def test_audio_thinker_recipe_is_audio_thinkers_setting_and_trl_keeps_every_pinned_value(tmp_path, monkeypatch):
    """Audio-Thinker (arXiv 2508.08039) on Qwen2.5-Omni's thinker: R_a (1 + 0.5 R_c) + 0.5 R_f + R_t with Qwen3-8B-Base
    judges, LoRA r 8 / alpha 32, lr 1e-6, G 8, beta 0.04, T 1.0, 2 prompts x 8 completions per step, 1000 steps, AVQA;
    and GRPOConfig keeps every value."""
    from grpo_audio.train.build import grpo_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recipe = load_recipe(AUDIO_THINKER, _stand_in_paths(tmp_path))
    model, trainer, rollout, rewards = recipe.model, recipe.trainer, recipe.rollout, recipe.rewards
    assert model.family == "qwen2_5_omni_thinker" and (model.lora.r, model.lora.alpha) == (8, 32)
    assert rewards.combiner == "audio_thinker"
    assert [t.name for t in rewards.terms] == ["accuracy", "format", "consistency", "thinking"]
    assert {t.options.get("model") for t in rewards.terms[2:]} == {"Qwen/Qwen3-8B-Base"}
    assert rewards.terms[1].options == {"mode": "adaptive"} and recipe.prompt.template == "audio_thinker_v1"
    assert (rollout.num_generations, rollout.temperature) == (8, 1.0)
    assert (trainer["learning_rate"], trainer["beta"], trainer["max_steps"]) == (1e-6, 0.04, 1000)
    assert trainer["per_device_train_batch_size"] * trainer["gradient_accumulation_steps"] == 16
    args = grpo_config(recipe, tmp_path / "run")
    changed = {
        key: (value, getattr(args, key))
        for key, value in trainer.items()
        if key != "generation_batch_size" and getattr(args, key) != value
    }
    assert not changed, f"GRPOConfig did not keep the recipe's values (recipe, GRPOConfig): {changed}"
