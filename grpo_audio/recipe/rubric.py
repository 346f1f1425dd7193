"""The recipe's ``rewards`` section as one ``rewards.Rubric``: terms, weights, combiner and the unscored limit."""

from __future__ import annotations

import rewards
from grpo_audio.recipe.schema import Recipe


def recipe_rubric(recipe: Recipe) -> rewards.Rubric:
    """R_total = combiner(w_i, r_i) over ``recipe.rewards.terms`` (LLM judges start when their term is built)."""
    return rewards.Rubric(
        [rewards.TermSpec(t.name, t.weight, t.options, t.label) for t in recipe.rewards.terms],
        recipe.rewards.combiner,
        recipe.rewards.combiner_options,
        recipe.rewards.max_unscored_fraction,
    )
