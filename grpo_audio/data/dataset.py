"""Turn audio questions into the training dataset TRL consumes: one row per question with the rendered prompt.

Columns: ``prompt`` (ChatML text with the clip's ``<|cAUDIO|>`` placeholders), ``audio`` (absolute path),
``id``, ``question``, ``choices``, ``answer`` and the manifest's metadata fields. TRL forwards every column but
``prompt`` to the reward functions, so rewards see the gold answer and metadata, never the waveform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from datasets import Dataset

from grpo_audio.audio.covo import SAMPLE_RATE, placeholder_count, trim_and_pad
from grpo_audio.audio.io import AudioLoadError, load_audio
from grpo_audio.data.manifest import AudioQuestion, DataError
from grpo_audio.data.prompting import PromptTemplate, render_prompt


def clip_placeholders(path: str) -> int:
    """Placeholder count of a clip: decode it at 24 kHz, trim/pad, count frames (also proves the file decodes)."""
    return placeholder_count(len(trim_and_pad(load_audio(path, SAMPLE_RATE))))


def build_dataset(
    rows: Sequence[AudioQuestion], tokenizer, template: PromptTemplate, placeholders: Mapping[str, int] | None = None
) -> Dataset:
    """``placeholders`` (row id -> count, e.g. ``SkipReport.placeholders``) saves decoding each clip again; rows
    missing from it are decoded here."""
    records = []
    metadata_keys = sorted({k for r in rows for k in r.metadata})
    for row in rows:
        try:
            n = placeholders[row.id] if placeholders and row.id in placeholders else clip_placeholders(row.audio)
        except AudioLoadError as exc:
            raise DataError(f"row {row.id!r}: {exc}") from exc
        record = {
            "prompt": render_prompt(tokenizer, template, row.question, row.choices, n),
            "audio": row.audio,
            "id": row.id,
            "question": row.question,
            "choices": row.choices,
            "answer": row.answer,
        }
        for key in metadata_keys:
            record[key] = row.metadata.get(key)
        records.append(record)
    return Dataset.from_list(records)
