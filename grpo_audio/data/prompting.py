"""Prompt templates (versioned YAML files in ``prompts/``) rendered in the model family's chat layout.

Covo-Audio's rendered prompt for one clip with n placeholder frames::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<|begofcAUDIO|><|cAUDIO|> x n<|endofcAUDIO|>{user}
    <|im_end|>\\n<|im_start|>assistant\\n

where n comes from the clip's length (``grpo_audio.audio.covo.placeholder_count``) and ``{user}`` is the
template's user text with the question and choices filled in.

The layout comes from the tokenizer's chat template. A tokenizer without one (the released Covo-Audio tokenizer may
ship none: the released inference code writes the ChatML string by hand) gets ``CHATML_TEMPLATE``, the ChatML layout
above that Covo-Audio was trained with; this is logged once per process.

Qwen2-Audio (``model.family: qwen2_audio``): the user turn is a list of an audio part and the text part, as its
processor is driven; its chat template renders the audio part as ``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n``
and ``<|AUDIO|>`` is then repeated n times (n from ``grpo_audio.audio.qwen2_audio.placeholder_count``), which is
what ``Qwen2AudioProcessor`` does to the text (``tests/test_qwen2_audio.py``). A tokenizer without a chat template
gets the family's (``grpo_audio.model.family``).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from grpo_audio.model.family import COVO_AUDIO, ModelFamily
from grpo_audio.recipe.errors import RecipeError
from grpo_audio.recipe.templates import find_template

logger = logging.getLogger("grpo_audio.data.prompting")

_REQUIRED = ("name", "version", "system", "user", "choice_line")
_OPTIONAL = {"choice_separator": "\n"}  # between the rendered choice lines
_warned_no_template = False


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    system: str
    user: str
    choice_line: str
    path: str
    choice_separator: str = "\n"

    @property
    def ident(self) -> str:
        return f"{self.name}@v{self.version}"

    def user_text(self, question: str, choices: Sequence[str]) -> str:
        lines = [
            self.choice_line.format(letter=string.ascii_uppercase[i], index=i + 1, text=text)
            for i, text in enumerate(choices)
        ]
        return self.user.format(question=question.strip(), choices=self.choice_separator.join(lines))


def load_template(name_or_path: str) -> PromptTemplate:
    path = find_template(name_or_path)
    return template_from_text(path.read_text(encoding="utf-8"), str(path))


def template_from_text(text: str, path: str) -> PromptTemplate:
    """A template from its YAML text (e.g. the copy a model directory keeps); ``path`` names it in errors."""
    data = yaml.safe_load(text) or {}
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise RecipeError(f"{path}: prompt template lacks {missing}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise RecipeError(f"{path}: unknown prompt template key(s) {unknown}")
    optional = {k: data.get(k, default) for k, default in _OPTIONAL.items()}
    return PromptTemplate(**{k: data[k] for k in _REQUIRED}, path=path, **optional)


def audio_block(n_placeholders: int) -> str:
    """Covo-Audio's audio block of n placeholders."""
    return COVO_AUDIO.audio_block(n_placeholders)


def fallback_chat_template(tokenizer, family: ModelFamily = COVO_AUDIO) -> str | None:
    """None when the tokenizer has a chat template (it is used); else the family's layout (Covo-Audio's ChatML,
    ``CHATML_TEMPLATE``; logged once per process)."""
    global _warned_no_template
    if getattr(tokenizer, "chat_template", None):
        return None
    if not _warned_no_template:
        _warned_no_template = True
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        logger.warning(
            "tokenizer %s has no chat template; using the layout %s was trained with (%s)",
            name,
            family.title,
            "<|im_start|>role\\n...<|im_end|>\\n, as the released inference code writes it"
            if family is COVO_AUDIO
            else "the family's chat template",
        )
    return family.chat_template


def render_prompt(
    tokenizer,
    template: PromptTemplate,
    question: str,
    choices: Sequence[str],
    n_placeholders: int,
    family: ModelFamily = COVO_AUDIO,
):
    """The full prompt text in the family's layout (module docstring; the tokenizer's chat template, else the
    family's; generation prompt appended)."""
    user = template.user_text(question, choices)
    if not family.audio_in_content_list:
        content = family.audio_block(n_placeholders) + user
        messages = [{"role": "system", "content": template.system}, {"role": "user", "content": content}]
        chat_template = fallback_chat_template(tokenizer, family)
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
    parts = [{"type": "audio", "audio_url": "clip"}, {"type": "text", "text": user}]
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": parts})
    text = tokenizer.apply_chat_template(
        messages,
        chat_template=fallback_chat_template(tokenizer, family),
        tokenize=False,
        add_generation_prompt=True,
    )
    placeholder = family.placeholder
    if text.count(placeholder) != 1:
        raise ValueError(
            f"the chat template rendered {text.count(placeholder)} {placeholder} for one audio part; expected 1"
        )
    return text.replace(placeholder, placeholder * n_placeholders)
