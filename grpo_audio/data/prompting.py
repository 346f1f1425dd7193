"""Prompt templates (versioned YAML files in ``prompts/``) rendered in Covo-Audio's ChatML layout.

Rendered prompt for one clip with n placeholder frames::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<|begofcAUDIO|><|cAUDIO|> x n<|endofcAUDIO|>{user}
    <|im_end|>\\n<|im_start|>assistant\\n

where n comes from the clip's length (``grpo_audio.audio.covo.placeholder_count``) and ``{user}`` is the
template's user text with the question and choices filled in.

The layout comes from the tokenizer's chat template. A tokenizer without one (the released Covo-Audio tokenizer may
ship none: the released inference code writes the ChatML string by hand) gets ``CHATML_TEMPLATE``, the ChatML layout
above that Covo-Audio was trained with; this is logged once per process.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from grpo_audio.model.tokenizer import AUDIO_BEGIN, AUDIO_END, AUDIO_PLACEHOLDER, CHATML_TEMPLATE
from grpo_audio.recipe.errors import RecipeError
from grpo_audio.recipe.templates import find_template

logger = logging.getLogger("grpo_audio.data.prompting")

_REQUIRED = ("name", "version", "system", "user", "choice_line")
_warned_no_template = False


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    system: str
    user: str
    choice_line: str
    path: str

    @property
    def ident(self) -> str:
        return f"{self.name}@v{self.version}"

    def user_text(self, question: str, choices: Sequence[str]) -> str:
        lines = [
            self.choice_line.format(letter=string.ascii_uppercase[i], index=i + 1, text=text)
            for i, text in enumerate(choices)
        ]
        return self.user.format(question=question.strip(), choices="\n".join(lines))


def load_template(name_or_path: str) -> PromptTemplate:
    path = find_template(name_or_path)
    return template_from_text(path.read_text(encoding="utf-8"), str(path))


def template_from_text(text: str, path: str) -> PromptTemplate:
    """A template from its YAML text (e.g. the copy a model directory keeps); ``path`` names it in errors."""
    data = yaml.safe_load(text) or {}
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise RecipeError(f"{path}: prompt template lacks {missing}")
    unknown = sorted(set(data) - set(_REQUIRED))
    if unknown:
        raise RecipeError(f"{path}: unknown prompt template key(s) {unknown}")
    return PromptTemplate(**{k: data[k] for k in _REQUIRED}, path=path)


def audio_block(n_placeholders: int) -> str:
    return AUDIO_BEGIN + AUDIO_PLACEHOLDER * n_placeholders + AUDIO_END


def fallback_chat_template(tokenizer) -> str | None:
    """None when the tokenizer has a chat template (it is used); else Covo-Audio's ChatML, ``CHATML_TEMPLATE``
    (logged once per process)."""
    global _warned_no_template
    if getattr(tokenizer, "chat_template", None):
        return None
    if not _warned_no_template:
        _warned_no_template = True
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        logger.warning(
            "tokenizer %s has no chat template; using the ChatML layout Covo-Audio was trained with "
            "(<|im_start|>role\\n...<|im_end|>\\n, as the released inference code writes it)",
            name,
        )
    return CHATML_TEMPLATE


def render_prompt(tokenizer, template: PromptTemplate, question: str, choices: Sequence[str], n_placeholders: int):
    """The full prompt text (the tokenizer's chat template, else Covo-Audio's ChatML; generation prompt appended)."""
    messages = [
        {"role": "system", "content": template.system},
        {"role": "user", "content": audio_block(n_placeholders) + template.user_text(question, choices)},
    ]
    return tokenizer.apply_chat_template(
        messages, chat_template=fallback_chat_template(tokenizer), tokenize=False, add_generation_prompt=True
    )
