"""Turn audio questions into the training dataset TRL consumes: one row per question with the rendered prompt.

Columns: ``prompt`` (the family's chat layout with the clip's audio placeholders), ``audio`` (absolute path),
``id``, ``question``, ``choices``, ``answer`` and the manifest's metadata fields. TRL forwards every column but
``prompt`` to the reward functions, so rewards see the gold answer and metadata, never the waveform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from datasets import Dataset

from grpo_audio.audio.front_ends import AudioFrontEnd
from grpo_audio.audio.io import AudioLoadError, load_audio
from grpo_audio.data.prompting import PromptTemplate, render_prompt
from grpo_audio.data.rows import AudioQuestion, DataError
from grpo_audio.model.family import COVO_AUDIO, ModelFamily


def clip_placeholders(path: str, front_end: AudioFrontEnd = COVO_AUDIO.front_end) -> int:
    """Placeholder count of a clip: decode it at the front end's rate and count (also proves the file decodes)."""
    return front_end.placeholders_for_file_length(len(load_audio(path, front_end.sample_rate)), front_end.sample_rate)


def build_dataset(
    rows: Sequence[AudioQuestion],
    tokenizer,
    template: PromptTemplate,
    clip_lengths: Mapping[str, tuple[int, int]] | None = None,
    family: ModelFamily = COVO_AUDIO,
) -> Dataset:
    """Prompt rows in ``family``'s layout. ``clip_lengths`` (row id -> (frames, sample rate), e.g.
    ``SkipReport.clip_lengths``) saves decoding each clip again; rows missing from it are decoded here."""
    records = []
    metadata_keys = sorted({k for r in rows for k in r.metadata})
    front_end = family.front_end
    for row in rows:
        try:
            if clip_lengths and row.id in clip_lengths:
                n = front_end.placeholders_for_file_length(*clip_lengths[row.id])
            else:
                n = clip_placeholders(row.audio, front_end)
        except AudioLoadError as exc:
            raise DataError(f"row {row.id!r}: {exc}") from exc
        record = {
            "prompt": render_prompt(tokenizer, template, row.question, row.choices, n, family),
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
