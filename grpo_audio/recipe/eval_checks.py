"""Checks of the recipe's ``eval`` section that relate it to other sections (ranges are in ``ranges``)."""

from __future__ import annotations

import re

from grpo_audio.recipe.errors import RecipeError
from grpo_audio.recipe.schema import Recipe
from grpo_audio.recipe.templates import find_template

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
DEFAULT_SAVE_STEPS = 100  # grpo_audio.train.build.TRAINER_DEFAULTS["save_steps"]
BEST_METRICS = ("accuracy", "pass_at_k", "sampled_accuracy")


def check_eval(recipe: Recipe) -> None:
    """Set names unique and usable as metric names; a source's path given (or, for 'synthetic', the held-out split
    present); templates found; ``best_metric`` naming a metric some set logs, on steps that have a checkpoint."""
    spec = recipe.eval
    names = [s.name for s in spec.sets]
    for index, item in enumerate(spec.sets):
        where = f"eval.sets[{index}]"
        if not _NAME.match(item.name):
            raise RecipeError(f"{where}.name={item.name!r}: use letters, digits, '_', '-' or '.' (it names metrics)")
        if item.name in names[:index]:
            raise RecipeError(f"{where}.name={item.name!r}: two eval sets have this name")
        if item.source == "synthetic":
            synthetic = recipe.data.synthetic
            if recipe.data.source != "synthetic" or synthetic.heldout_questions <= 0:
                raise RecipeError(
                    f"{where}.source 'synthetic' is the synthetic held-out split: it needs data.source 'synthetic' "
                    f"and data.synthetic.heldout_questions > 0 (they are {recipe.data.source!r} and "
                    f"{synthetic.heldout_questions})"
                )
            if item.path is not None:
                raise RecipeError(f"{where}.path is set, but source 'synthetic' generates its clips")
        elif not item.path:
            raise RecipeError(f"{where}.source is {item.source!r} but {where}.path is not set")
        if item.template is not None:
            find_template(item.template)
    if spec.best_metric is None:
        return
    allowed = [f"eval/{n}/{m}" for n in names for m in BEST_METRICS if m == "accuracy" or spec.samples > 0]
    if spec.best_metric not in allowed:
        raise RecipeError(f"eval.best_metric={spec.best_metric!r}: not a metric the eval sets log; one of {allowed}")
    save_steps = int(recipe.trainer.get("save_steps", DEFAULT_SAVE_STEPS))
    if spec.every_steps <= 0 or spec.every_steps % save_steps:
        raise RecipeError(
            f"eval.best_metric needs eval.every_steps (now {spec.every_steps}) > 0 and a multiple of "
            f"trainer.save_steps ({save_steps}): each evaluated step must have a checkpoint to keep"
        )
