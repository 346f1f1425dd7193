"""The texts a tiny in-process tokenizer is trained on (``grpo_audio.model.build``): everything a run renders.

A tiny BPE tokenizer only encodes well what it was trained on, so its corpus is the prompt template's system and
user texts, every row's question and choices, and the synthetic tasks' questions and choices (the synthetic
held-out split asks them on clips the training rows do not have). A pretrained tokenizer ignores these texts.
"""

from __future__ import annotations

from collections.abc import Sequence

from grpo_audio.data.prompting import PromptTemplate
from grpo_audio.data.rows import AudioQuestion
from grpo_audio.data.synthetic import QUESTIONS


def vocabulary_texts(rows: Sequence[AudioQuestion], template: PromptTemplate) -> list[str]:
    """Template texts, then each row's question, then each row's choices, then the synthetic questions (in that
    order: the order is part of what makes a tiny tokenizer, and so a seeded run, reproducible)."""
    texts = [template.system, template.user] + [r.question for r in rows] + [c for r in rows for c in r.choices]
    return texts + [question for question, _ in QUESTIONS.values()]
