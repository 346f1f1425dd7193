"""Recipes: YAML files validated into typed dataclasses (one section per concern), with CLI overrides."""

from grpo_audio.recipe.errors import RecipeError
from grpo_audio.recipe.loader import load_recipe, recipe_to_dict
from grpo_audio.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_to_dict"]
