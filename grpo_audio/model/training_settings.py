"""The training settings a saved model directory carries: ``grpo_audio_training.json``.

A model is evaluated best with the prompt and decoding it was trained with. A model directory copied out of its run
directory loses ``RUN/recipe.yaml``, so ``final_model/`` and ``initial_model/`` hold their own record of what
shapes the model's input and output (``grpo-audio eval`` reads it)::

    {
      "format": "grpo_audio_training/1",
      "harness_version": "0.1.0",
      "prompt_template": {"name": "short_cot_v1", "version": 1, "sha256": "<hex of content's UTF-8 bytes>",
                          "content": "<the template file, verbatim>"},
      "decoding": {"max_completion_length": 64, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "text_only": true},
      "audio": {"audio_ablation": "none", "resampler": "sinc"}
    }

``decoding`` is the recipe's ``rollout`` section, ``audio`` its ``model.audio_ablation`` and ``data.resampler``
(the settings that change what the model hears). The template's content is kept whole so that the model can be
evaluated where that template is not installed (or has changed since); ``sha256`` guards it against edits.

Reading validates every field: ``TrainingSettingsError`` (a ``CheckpointError``) names the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grpo_audio import __version__
from grpo_audio.model.checkpoint_format import CheckpointError
from grpo_audio.recipe.schema import DataSection, ModelSection
from grpo_audio.recipe.templates import find_template

SETTINGS_NAME = "grpo_audio_training.json"
FORMAT = "grpo_audio_training/1"
# The recipe keys each recorded setting came from (and that ``grpo-audio eval`` sets from it)
RECIPE_KEYS = {
    "max_completion_length": "rollout.max_completion_length",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
    "text_only": "rollout.text_only",
    "audio_ablation": "model.audio_ablation",
    "resampler": "data.resampler",
}


class TrainingSettingsError(CheckpointError):
    """A ``grpo_audio_training.json`` that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class TrainingSettings:
    """What a model was trained with (see the module docstring); ``path`` is the file it was read from, if any."""

    template_name: str
    template_version: int
    template_sha256: str
    template_content: str
    max_completion_length: int
    temperature: float
    top_p: float
    top_k: int
    text_only: bool
    audio_ablation: str
    resampler: str
    harness_version: str = __version__
    path: str | None = None

    @property
    def template_ident(self) -> str:
        return f"{self.template_name}@v{self.template_version}"

    def recipe_values(self) -> dict[str, Any]:
        """Recipe key -> recorded value, e.g. ``{"rollout.top_k": 0, ...}``."""
        return {key: getattr(self, field) for field, key in RECIPE_KEYS.items()}

    def to_json(self) -> str:
        """The file's text (format above)."""
        data = {
            "format": FORMAT,
            "harness_version": self.harness_version,
            "prompt_template": {
                "name": self.template_name,
                "version": self.template_version,
                "sha256": self.template_sha256,
                "content": self.template_content,
            },
            "decoding": {
                "max_completion_length": self.max_completion_length,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
                "text_only": self.text_only,
            },
            "audio": {"audio_ablation": self.audio_ablation, "resampler": self.resampler},
        }
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def settings_of_recipe(recipe) -> TrainingSettings:
    """The settings ``recipe`` trains with; its prompt template file is read whole (bytes kept as they are)."""
    template_file = find_template(recipe.prompt.template)
    content = template_file.read_bytes().decode("utf-8")
    template = yaml.safe_load(content) or {}
    rollout = recipe.rollout
    return TrainingSettings(
        template_name=str(template.get("name")),
        template_version=template.get("version"),
        template_sha256=hashlib.sha256(content.encode("utf-8")).hexdigest(),
        template_content=content,
        max_completion_length=rollout.max_completion_length,
        temperature=float(rollout.temperature),
        top_p=float(rollout.top_p),
        top_k=rollout.top_k,
        text_only=rollout.text_only,
        audio_ablation=recipe.model.audio_ablation,
        resampler=recipe.data.resampler,
    )


def settings_files(recipe) -> dict[str, str]:
    """``{file name: text}`` to write into a model directory as it is staged (``extra_files`` of the savers)."""
    return {SETTINGS_NAME: settings_of_recipe(recipe).to_json()}


def read_training_settings(model_dir: str | Path) -> TrainingSettings | None:
    """The settings recorded in ``model_dir``; None when it has no settings file (a model saved before they were
    recorded, or by something else). Raises ``TrainingSettingsError`` for a file that is there but unusable."""
    path = Path(model_dir) / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingSettingsError(f"{path}: not a readable JSON file ({exc})") from None
    field = _Fields(path, data)
    found = field.get("format", str)
    if found != FORMAT:
        raise TrainingSettingsError(f"{path}: field 'format': expected {FORMAT!r}, got {found!r}")
    content = field.get("prompt_template.content", str)
    sha256 = field.get("prompt_template.sha256", str)
    if hashlib.sha256(content.encode("utf-8")).hexdigest() != sha256:
        raise TrainingSettingsError(
            f"{path}: field 'prompt_template.content': does not match prompt_template.sha256 (edited by hand?)"
        )
    settings = TrainingSettings(
        template_name=field.get("prompt_template.name", str, lambda v: bool(v.strip()), "a non-empty name"),
        template_version=field.get("prompt_template.version", int),
        template_sha256=sha256,
        template_content=content,
        max_completion_length=field.get("decoding.max_completion_length", int, lambda v: v >= 1, "at least 1"),
        temperature=float(field.get("decoding.temperature", float, lambda v: v >= 0, ">= 0")),
        top_p=float(field.get("decoding.top_p", float, lambda v: 0 < v <= 1, "in (0, 1]")),
        top_k=field.get("decoding.top_k", int, lambda v: v >= 0, ">= 0"),
        text_only=field.get("decoding.text_only", bool),
        audio_ablation=field.choice("audio.audio_ablation", ModelSection, "audio_ablation"),
        resampler=field.choice("audio.resampler", DataSection, "resampler"),
        harness_version=field.get("harness_version", str),
        path=str(path),
    )
    return settings


class _Fields:
    """Typed access to the dotted fields of the parsed file, each failure a ``TrainingSettingsError`` naming it."""

    def __init__(self, path: Path, data: Any) -> None:
        if not isinstance(data, dict):
            raise TrainingSettingsError(f"{path}: expected a JSON object, got {type(data).__name__}")
        self.path = path
        self.data = data

    def _fail(self, dotted: str, problem: str) -> TrainingSettingsError:
        return TrainingSettingsError(f"{self.path}: field {dotted!r}: {problem}")

    def get(self, dotted: str, kind: type, check=None, expected: str = "") -> Any:
        node = self.data
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                raise self._fail(dotted, "missing")
            node = node[key]
        # JSON has one number type: an int is a valid float; a bool is no number (Python's bool is an int)
        kinds = (int, float) if kind is float else (kind,)
        if isinstance(node, bool) != (kind is bool) or not isinstance(node, kinds):
            raise self._fail(dotted, f"expected {kind.__name__}, got {node!r}")
        if check is not None and not check(node):
            raise self._fail(dotted, f"expected {expected}, got {node!r}")
        return node

    def choice(self, dotted: str, section: type, name: str) -> str:
        """A string among the values the recipe schema allows for ``section.name`` (a ``Literal``)."""
        allowed = typing.get_args(typing.get_type_hints(section)[name])
        return self.get(dotted, str, lambda v: v in allowed, f"one of {', '.join(allowed)}")
