"""Allowed ranges of the recipe's numeric fields, as one table, and the few checks that relate two fields.

Types are checked when the recipe is built (``typed``); this module checks values, before anything is built or
written (the loader runs before the run directory exists). Each entry of ``RANGES`` is (field path, range, why):

* a path is dotted, with ``[]`` for every item of a list (``rewards.terms[].weight``); a field that is unset (null,
  a ``trainer`` key the recipe does not give, an absent ``model.lora``) is not checked: TRL's and the harness's
  defaults are in range;
* every checked value must be a finite number: YAML's ``.nan`` and ``.inf`` would otherwise pass any comparison
  written as ``if not value > 0`` the wrong way round, or turn a loss into NaN at step 1.

The message names the field, the value and the allowed range, e.g.
``trainer.learning_rate=-1.0: must be > 0``. Sampling (``rollout.temperature``, ``top_k``, ``top_p``,
``max_completion_length``), ``rollout.num_generations`` and ``rewards.max_unscored_fraction`` keep their own checks
in the loader, whose messages say what the value does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from grpo_audio.recipe.errors import RecipeError


@dataclass(frozen=True)
class Range:
    """An interval of numbers (``low``/``high`` None = unbounded; ``open_low``/``open_high`` exclude the bound),
    plus single values allowed outside it (``also``, e.g. -1 for "use the epochs")."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    also: tuple[float, ...] = ()

    def contains(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        """The range as text: ``> 0``, ``at least 1``, ``in (0, 1]``, ``at least 1, or -1``; empty for any finite
        number."""
        if self.low is None and self.high is None:
            text = ""
        elif self.high is None:
            text = f"> {self.low:g}" if self.open_low else f"at least {self.low:g}"
        elif self.low is None:
            text = f"< {self.high:g}" if self.open_high else f"at most {self.high:g}"
        else:
            text = f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        return text + "".join(f", or {v:g}" for v in self.also)


POSITIVE = Range(0, open_low=True)  # > 0
NON_NEGATIVE = Range(0)  # at least 0
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, open_low=True)  # (0, 1]
UNIT = Range(0, 1)  # [0, 1]
UNIT_OPEN = Range(0, 1, open_high=True)  # [0, 1)
FINITE = Range()  # any finite number

# (field path, allowed range, why: shown after the range; "" = nothing to add)
RANGES: list[tuple[str, Range, str]] = [
    # model
    ("model.adapter_learning_rate", POSITIVE, "null = trainer.learning_rate"),
    ("model.lora.r", AT_LEAST_ONE, "the adapter rank"),
    ("model.lora.alpha", POSITIVE, "scale = alpha / r; 0 would switch the adapters off"),
    ("model.lora.dropout", UNIT_OPEN, ""),
    ("model.tiny.hidden_size", AT_LEAST_ONE, ""),
    ("model.tiny.num_layers", AT_LEAST_ONE, ""),
    ("model.tiny.num_heads", AT_LEAST_ONE, ""),
    ("model.tiny.num_kv_heads", AT_LEAST_ONE, ""),
    ("model.tiny.intermediate_size", AT_LEAST_ONE, ""),
    ("model.tiny.encoder_d_model", AT_LEAST_ONE, ""),
    ("model.tiny.encoder_layers", AT_LEAST_ONE, ""),
    ("model.tiny.encoder_heads", AT_LEAST_ONE, ""),
    ("model.tiny.encoder_ffn_dim", AT_LEAST_ONE, ""),
    ("model.tiny.adapter_hidden_size", AT_LEAST_ONE, ""),
    ("model.tiny.text_vocab_size", Range(256), "one entry per byte"),
    ("model.tiny.speech_vocab_size", AT_LEAST_ONE, "the speech ids follow the text vocabulary, as in Covo-Audio"),
    # data
    ("data.max_samples", AT_LEAST_ONE, "null = all rows"),
    ("data.min_duration_s", Range(0.01), "one 10 ms frame: a shorter clip gives the model no audio"),
    ("data.max_duration_s", POSITIVE, "null = no limit"),
    ("data.synthetic.num_questions", AT_LEAST_ONE, ""),
    ("data.synthetic.heldout_questions", NON_NEGATIVE, "0 = no held-out split"),
    # cold start
    ("coldstart.steps", NON_NEGATIVE, "0 = no warm-up"),
    ("coldstart.batch_size", AT_LEAST_ONE, ""),
    ("coldstart.learning_rate", POSITIVE, ""),
    # evaluation during training
    ("eval.every_steps", NON_NEGATIVE, "0 = only before training and at the end"),
    ("eval.batch_size", AT_LEAST_ONE, ""),
    ("eval.max_new_tokens", AT_LEAST_ONE, "null = rollout.max_completion_length"),
    ("eval.samples", NON_NEGATIVE, "0 = greedy only"),
    ("eval.sets[].max_samples", AT_LEAST_ONE, "null = all"),
    # rewards
    ("rewards.terms[].weight", FINITE, "0 logs the term without training on it"),
    # rollout
    ("rollout.vllm.gpu_memory_utilization", FRACTION, "a share of the accelerator's memory"),
    ("rollout.vllm.max_model_len", AT_LEAST_ONE, "null = the backbone's max_position_embeddings"),
    ("rollout.vllm.server_timeout_s", POSITIVE, ""),
    ("rollout.vllm.sync_port", Range(1, 65535), "a TCP port"),
    ("rollout.dynamic_sampling.max_extra_rounds", NON_NEGATIVE, "0 = filter without refilling"),
    # trainer: TRL's GRPOConfig / transformers' TrainingArguments fields, where the recipe sets them
    ("trainer.learning_rate", POSITIVE, ""),
    ("trainer.per_device_train_batch_size", AT_LEAST_ONE, ""),
    ("trainer.per_device_eval_batch_size", AT_LEAST_ONE, ""),
    ("trainer.gradient_accumulation_steps", AT_LEAST_ONE, ""),
    ("trainer.generation_batch_size", AT_LEAST_ONE, ""),
    ("trainer.steps_per_generation", AT_LEAST_ONE, ""),
    ("trainer.max_steps", Range(1, also=(-1,)), "-1 = trainer.num_train_epochs decides; 0 would train no step"),
    ("trainer.num_train_epochs", NON_NEGATIVE, ""),
    ("trainer.save_steps", POSITIVE, "below 1: a fraction of the total steps"),
    ("trainer.logging_steps", POSITIVE, "below 1: a fraction of the total steps"),
    ("trainer.eval_steps", POSITIVE, "below 1: a fraction of the total steps"),
    ("trainer.save_total_limit", AT_LEAST_ONE, "null keeps every checkpoint; transformers reads 0 as null"),
    ("trainer.warmup_steps", NON_NEGATIVE, "below 1: a fraction of the total steps"),
    ("trainer.weight_decay", NON_NEGATIVE, ""),
    ("trainer.adam_beta1", UNIT_OPEN, ""),
    ("trainer.adam_beta2", UNIT_OPEN, ""),
    ("trainer.adam_epsilon", POSITIVE, ""),
    ("trainer.max_grad_norm", NON_NEGATIVE, "0 = no clipping"),
    ("trainer.beta", NON_NEGATIVE, "the KL coefficient; 0 = no reference model"),
    ("trainer.epsilon", POSITIVE, "the clipping range of the ratio"),
    ("trainer.epsilon_high", POSITIVE, "null = trainer.epsilon"),
    ("trainer.delta", POSITIVE, "null = no upper clip of the ratio"),
    ("trainer.num_iterations", AT_LEAST_ONE, "updates per generation batch"),
    ("trainer.top_entropy_quantile", FRACTION, "the share of highest-entropy tokens in the loss; 1 = all"),
    ("trainer.ref_model_sync_steps", AT_LEAST_ONE, ""),
    ("trainer.ref_model_mixup_alpha", UNIT, ""),
    ("trainer.dataloader_num_workers", NON_NEGATIVE, ""),
    ("trainer.max_tokens_per_microbatch", AT_LEAST_ONE, "null = fixed chunks of per_device_train_batch_size rows"),
    # run
    ("run.seed", NON_NEGATIVE, "numpy's generators refuse negative seeds"),
]


TINY_DIVISIBLE = (("hidden_size", "num_heads"), ("num_heads", "num_kv_heads"), ("encoder_d_model", "encoder_heads"))


def field_values(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(concrete path, value)`` for every value ``path`` reaches in ``obj``; unset fields yield nothing."""
    head, _, rest = path.partition(".")
    many = head.endswith("[]")
    name = head[:-2] if many else head
    # a dataclass must have the field (a misspelled table path fails loudly); a dict (trainer) may lack the key
    value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name)
    if value is None:
        return
    items = list(enumerate(value)) if many else [(None, value)]
    for index, item in items:
        where = name if index is None else f"{name}[{index}]"
        if not rest:
            yield where, item
        else:
            for sub, found in field_values(item, rest):
                yield f"{where}.{sub}", found


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ranges(recipe) -> None:
    """Raise ``RecipeError`` for the first value outside its range in ``RANGES``."""
    for path, allowed, why in RANGES:
        for where, value in field_values(recipe, path):
            if not _is_number(value):
                continue  # a type the table does not describe; the typed conversion or TRL refuses it
            note = f" ({why})" if why else ""
            if not math.isfinite(value):
                bound = f" {allowed.describe()}" if allowed.describe() else ""
                raise RecipeError(f"{where}={value}: must be a finite number{bound}{note}", key=_key(where))
            if not allowed.contains(value):
                raise RecipeError(f"{where}={value}: must be {allowed.describe()}{note}", key=_key(where))


def _key(where: str) -> str:
    """The dotted key of a checked value: ``rewards.terms[1].weight`` -> ``rewards.terms`` (an override sets the
    list whole)."""
    return where.split("[", 1)[0]


def check_consistency(recipe) -> None:
    """Checks that relate two fields (each in range on its own)."""
    trainer = recipe.trainer
    if trainer.get("max_steps", -1) == -1 and trainer.get("num_train_epochs", 3.0) == 0:
        raise RecipeError(
            "trainer.num_train_epochs=0 with trainer.max_steps=-1 (the default): the run would train no step; set "
            "trainer.max_steps >= 1 or trainer.num_train_epochs > 0"
        )
    loss_type = trainer.get("loss_type", "dapo")  # TRL 1.16's default
    if loss_type in ("grpo", "sapo", "dr_grpo", "luspo") and (
        trainer.get("entropy_coef", 0.0) != 0 or trainer.get("use_adaptive_entropy", False)
    ):
        raise RecipeError(
            f"trainer.entropy_coef with trainer.loss_type={loss_type}: the harness rescales per-sequence losses so "
            "that rows outside the loss do not shrink the step, which would scale TRL's entropy bonus too; use "
            "loss_type dapo or bnpo with an entropy bonus"
        )
    tiny = recipe.model.tiny
    if recipe.model.source == "tiny":
        # attention splits a width evenly over its heads, and grouped-query attention the heads over the KV heads
        for width, heads in TINY_DIVISIBLE:
            a, b = getattr(tiny, width), getattr(tiny, heads)
            if a % b:
                raise RecipeError(f"model.tiny.{width}={a}: must be a multiple of model.tiny.{heads}={b}")
    if recipe.data.source == "synthetic" and not recipe.data.synthetic.tasks:
        raise RecipeError("data.synthetic.tasks=[]: must name at least one task (pitch, count, longer)")
