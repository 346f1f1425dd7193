"""Where a recipe's ``prompt.template`` lives: a shipped template name (``prompts/<name>.yaml``) or a YAML path.

The recipe checks that the file exists when it is loaded; ``grpo_audio.data.prompting`` reads and renders it.
"""

from __future__ import annotations

from pathlib import Path

from grpo_audio.paths import tried
from grpo_audio.recipe.errors import RecipeError
from grpo_audio.resources import shipped_dir


def find_template(name_or_path: str) -> Path:
    """The template file: ``name_or_path`` itself when it ends in .yaml/.yml, else ``prompts/<name>.yaml``."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise RecipeError(f"prompt.template: file not found: {name_or_path}{tried(name_or_path)}")
        return candidate
    directory = shipped_dir("prompts")
    path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.yaml"))
        raise RecipeError(f"prompt.template: no template {name_or_path!r}; available: {', '.join(available)}")
    return path
