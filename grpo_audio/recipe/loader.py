"""Load a recipe: YAML file -> overrides -> typed ``Recipe`` -> value ranges (``ranges``) -> cross-section checks.

Overrides use dotted keys and YAML values: ``--set trainer.learning_rate=1e-6 --set rollout.num_generations=8``.
Every problem raises ``RecipeError`` with one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from grpo_audio.paths import tried
from grpo_audio.recipe.errors import RecipeError
from grpo_audio.recipe.eval_checks import check_eval
from grpo_audio.recipe.ranges import check_consistency, check_ranges
from grpo_audio.recipe.rubric import recipe_rubric
from grpo_audio.recipe.schema import (
    TRAINER_HARNESS_FIELDS,
    TRAINER_KEYS_OWNED_ELSEWHERE,
    TRAINER_KEYS_REFUSED,
    Recipe,
)
from grpo_audio.recipe.templates import find_template
from grpo_audio.recipe.typed import build_dataclass, convert, suggest
from grpo_audio.recipe.yaml_loader import load_yaml


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Recipe:
    """Read ``path`` (None = the embedded defaults), apply ``overrides`` and validate everything."""
    data: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        file = Path(path)
        if not file.is_file():
            raise RecipeError(f"recipe file not found: {where}{tried(where)}")
        try:
            data = load_yaml(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise RecipeError(f"{where}:{line} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: a recipe is a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item)
    try:
        recipe = build_dataclass(Recipe, {k: v for k, v in data.items()}, "")
    except RecipeError as exc:
        raise RecipeError(f"{origin(exc, where, overrides or [])}: {exc}") from None
    recipe.source_path = None if path is None else str(path)
    try:
        recipe.trainer = validate_trainer_section(recipe.trainer)
        check_cross_section(recipe)
    except RecipeError as exc:
        raise RecipeError(f"{origin(exc, where, overrides or [])}: {exc}") from None
    return recipe


def origin(error: RecipeError, where: str, overrides: list[str]) -> str:
    """Where a problem at ``error.key`` comes from: the last ``--set`` override that wrote that key (or a section
    holding it, or a key inside it), else the recipe file ``where``."""
    key = getattr(error, "key", None)
    if key:
        for item in reversed(overrides):
            dotted = item.partition("=")[0].strip()
            if dotted == key or key.startswith(f"{dotted}.") or dotted.startswith(f"{key}."):
                return f"--set {item}"
    return where


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested dict ``data``; the value is parsed as YAML 1.2 (see ``yaml_loader``)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} is not of the form section.key=value")
    dotted, _, raw = item.partition("=")
    keys = dotted.strip().split(".")
    if not all(keys):
        raise RecipeError(f"override {item!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise RecipeError(f"override {item!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


@functools.lru_cache(maxsize=1)
def grpo_config_fields() -> dict[str, Any]:
    """TRL's ``GRPOConfig`` init fields and their type hints (TRL is the source of truth for this section)."""
    from trl.trainer.grpo_config import GRPOConfig

    try:
        hints = typing.get_type_hints(GRPOConfig)
    except Exception:  # unresolvable forward refs in TRL's annotations: check names only
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(GRPOConfig) if f.init}


def validate_trainer_section(trainer: dict[str, Any]) -> dict[str, Any]:
    fields = grpo_config_fields()
    checked = {}
    for key, value in trainer.items():
        if key in TRAINER_KEYS_OWNED_ELSEWHERE:
            raise RecipeError(f"trainer.{key} is set in {TRAINER_KEYS_OWNED_ELSEWHERE[key]} instead")
        if key in TRAINER_KEYS_REFUSED:
            raise RecipeError(
                f"trainer.{key} is not supported: {TRAINER_KEYS_REFUSED[key]} (what is sampled must be what is "
                "optimized); sampling is set by rollout.temperature, rollout.top_k and rollout.top_p"
            )
        if key in TRAINER_HARNESS_FIELDS:
            checked[key] = convert(value, TRAINER_HARNESS_FIELDS[key][0], f"trainer.{key}")
            continue
        if key not in fields:
            hint = suggest(key, [*fields, *TRAINER_HARNESS_FIELDS], "trainer.")
            raise RecipeError(f"unknown key 'trainer.{key}' (not a GRPOConfig field){hint}", key=f"trainer.{key}")
        checked[key] = convert(value, fields[key], f"trainer.{key}")
    return checked


def generation_batch_size(recipe: Recipe, world_size: int = 1) -> int:
    """Rows per generation batch = per-device batch x processes x steps per generation (TRL's rule)."""
    t = recipe.trainer
    if t.get("generation_batch_size"):
        return int(t["generation_batch_size"])
    per_device = int(t.get("per_device_train_batch_size", 8))
    steps = int(t.get("steps_per_generation") or t.get("gradient_accumulation_steps", 1))
    return per_device * world_size * steps


def check_sampling(recipe: Recipe) -> None:
    """Rollout sampling settings the sampler and the log-prob passes can both apply (``SamplingDistribution``)."""
    spec = recipe.rollout
    if not spec.temperature > 0:
        raise RecipeError(
            f"rollout.temperature={spec.temperature}: GRPO samples, so it must be > 0 (1.0 = the model's distribution)"
        )
    if spec.top_k < 0:
        raise RecipeError(f"rollout.top_k={spec.top_k}: must be >= 0 (0 = off)")
    if not 0 < spec.top_p <= 1:
        raise RecipeError(f"rollout.top_p={spec.top_p}: must be in (0, 1] (1.0 = off)")
    if spec.max_completion_length < 1:
        raise RecipeError(f"rollout.max_completion_length={spec.max_completion_length}: must be at least 1")


# trainer.report_to names -> the modules transformers' integration needs (any one of them will do)
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_overlap(recipe: Recipe) -> None:
    """rollout.overlap needs rollouts that run beside the update: a separate server's."""
    spec = recipe.rollout
    if not spec.overlap:
        return
    if spec.engine != "vllm" or spec.vllm.mode != "server":
        where = "the hf engine generates" if spec.engine == "hf" else "a colocated vLLM engine samples"
        raise RecipeError(
            f"rollout.overlap needs rollout.engine vllm with rollout.vllm.mode server: {where} in the training "
            "process, on the trainer's own device, so there is nothing to overlap the update with",
            key="rollout.overlap",
        )
    if spec.dynamic_sampling.enabled:
        raise RecipeError(
            "rollout.overlap with rollout.dynamic_sampling: its extra rounds sample after the step's rewards are "
            "known, which a rollout prefetched a step ahead cannot wait for; turn one of them off",
            key="rollout.overlap",
        )
    t = recipe.trainer
    accumulation = int(t.get("gradient_accumulation_steps", 1))
    steps = int(t.get("steps_per_generation") or accumulation)
    if steps != accumulation or int(t.get("num_iterations", 1)) != 1:
        raise RecipeError(
            f"rollout.overlap needs one generation batch per optimizer step (trainer.steps_per_generation "
            f"{steps} = gradient_accumulation_steps {accumulation}, num_iterations 1): the rollouts prefetched "
            "are the next optimizer step's",
            key="rollout.overlap",
        )


def check_trackers(recipe: Recipe) -> None:
    """The tracking backends ``trainer.report_to`` names are installed, before anything is built or written
    (transformers would fail only when its callback starts, after the run directory is written)."""
    wanted = recipe.trainer.get("report_to")
    names = [wanted] if isinstance(wanted, str) else list(wanted or [])
    for name in names:
        modules = TRACKER_MODULES.get(name)
        if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
            raise RecipeError(
                f"trainer.report_to names {name!r} but {' or '.join(modules)} is not installed: "
                "pip install 'grpo-audio[tracking]' (or drop it from trainer.report_to)",
                key="trainer.report_to",
            )


def check_cross_section(recipe: Recipe) -> None:
    """Every value check (ranges first, then what relates fields and sections); raises ``RecipeError``."""
    check_ranges(recipe)
    check_consistency(recipe)
    check_sampling(recipe)
    check_overlap(recipe)
    check_trackers(recipe)
    if recipe.model.adapter_learning_rate is not None and recipe.model.freeze_adapter:
        raise RecipeError(
            "model.adapter_learning_rate is set but model.freeze_adapter is true: the adapter never trains"
        )
    g = recipe.rollout.num_generations
    if g < 2:
        raise RecipeError(f"rollout.num_generations={g}: GRPO needs at least 2 completions per prompt")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = generation_batch_size(recipe, world)
    if batch % g:
        raise RecipeError(
            f"the generation batch ({batch} rows = trainer.per_device_train_batch_size x {world} process(es) x "
            f"steps per generation) is not a multiple of rollout.num_generations={g}"
        )
    data = recipe.data
    if data.source != "synthetic":
        if not data.path:
            raise RecipeError(f"data.source is {data.source!r} but data.path is not set")
        if data.source in ("hf", "mmsu"):  # a dataset directory (MMSU's release is one) or a file
            if not Path(data.path).exists():
                what = "dataset" if data.source == "hf" else "file or dataset directory"
                raise RecipeError(f"data.path: {what} not found: {data.path}{tried(data.path)}")
        elif not Path(data.path).is_file():
            raise RecipeError(f"data.path: file not found: {data.path}{tried(data.path)}")
    if data.root is not None and not Path(data.root).is_dir():
        raise RecipeError(f"data.root: directory not found: {data.root}{tried(data.root)}")
    if data.max_duration_s is not None and data.max_duration_s <= data.min_duration_s:
        raise RecipeError(
            f"data.max_duration_s={data.max_duration_s} must be greater than data.min_duration_s={data.min_duration_s}"
        )
    if data.long_clips != "error" and data.max_duration_s is None:
        raise RecipeError(f"data.long_clips={data.long_clips!r} needs data.max_duration_s (no limit is set)")
    if recipe.model.source == "pretrained":
        if not recipe.model.path:
            raise RecipeError("model.source is 'pretrained' but model.path is not set")
        if not Path(recipe.model.path).is_dir():
            raise RecipeError(f"model.path: directory not found: {recipe.model.path}{tried(recipe.model.path)}")
        if recipe.coldstart.steps > 0 and not recipe.coldstart.allow_pretrained:
            # The warm-up's targets carry random answers (format only): on a model that already answers, it
            # trains the answers back to chance before GRPO starts.
            raise RecipeError(
                f"coldstart.steps={recipe.coldstart.steps} with model.source 'pretrained': the cold start trains on "
                "random answers and would bring a pretrained model's accuracy down to chance; set coldstart.steps=0, "
                "or coldstart.allow_pretrained=true to run it anyway"
            )
    find_template(recipe.prompt.template)
    check_rewards(recipe)
    check_eval(recipe)


def check_rewards(recipe: Recipe) -> None:
    fraction = recipe.rewards.max_unscored_fraction
    if not 0.0 <= fraction <= 1.0:
        raise RecipeError(f"rewards.max_unscored_fraction={fraction}: must be between 0 and 1")
    try:
        recipe_rubric(recipe)
    except (KeyError, ValueError, TypeError) as exc:
        raise RecipeError(f"rewards: {exc}") from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (what ``grpo-audio config`` prints and the run directory records)."""
    data = dataclasses.asdict(recipe)
    data.pop("source_path", None)
    return data
