"""Manifests and the synthetic set: bad rows are named, the synthetic set is reproducible and balanced."""

import json

import pytest

from grpo_audio.data.dataset import build_dataset
from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.prompting import load_template
from grpo_audio.data.rows import DataError
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.model.tiny import build_tiny_tokenizer, tiny_tokenizer_corpus


def test_synthetic_set_is_reproducible_and_balanced(tmp_path):
    a = write_synthetic_set(tmp_path / "a", 12, ["pitch", "count", "longer"], seed=3)
    b = write_synthetic_set(tmp_path / "b", 12, ["pitch", "count", "longer"], seed=3)
    c = write_synthetic_set(tmp_path / "c", 12, ["pitch", "count", "longer"], seed=4)
    wavs = sorted(p.name for p in (tmp_path / "a").glob("*.wav"))
    assert len(wavs) == 12
    assert all((tmp_path / "a" / w).read_bytes() == (tmp_path / "b" / w).read_bytes() for w in wavs)
    assert any((tmp_path / "a" / w).read_bytes() != (tmp_path / "c" / w).read_bytes() for w in wavs)
    rows = load_manifest(a)
    pitch = [r.answer for r in rows if r.metadata["task"] == "pitch"]
    assert sorted(pitch) == ["high", "high", "low", "low"]
    assert load_manifest(b)[0].question == rows[0].question
    assert len(load_manifest(c)) == 12


def _manifest(tmp_path, rows):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row, message",
    [
        ({"audio": "x.wav", "question": "q", "choices": ["a", "b"]}, "m.jsonl:1: missing field 'id'"),
        ({"id": "1", "audio": "nope.wav", "question": "q", "choices": ["a", "b"]}, "audio file not found"),
        ({"id": "1", "audio": "x.wav", "question": "q", "choices": ["a"]}, "at least 2 strings"),
        ({"id": "1", "audio": "x.wav", "question": "q", "choices": ["a", "b"], "answer": "c"}, "not one of"),
        ({"id": "1", "audio": "x.wav", "question": "q", "choices": ["a", "b"], "answer": 5}, "outside the 2"),
    ],
)
def test_bad_manifest_rows_are_named(tmp_path, row, message):
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        load_manifest(_manifest(tmp_path, [row]))


def test_duplicate_ids_and_index_answers(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"")
    row = {"id": "1", "audio": "x.wav", "question": "q", "choices": ["a", "b"], "answer": 1}
    assert load_manifest(_manifest(tmp_path, [row]))[0].answer == "b"  # AVQA-style index -> option text
    with pytest.raises(DataError, match=r"m.jsonl:2: row '1': duplicate id '1' \(first at .*m.jsonl:1\)"):
        load_manifest(_manifest(tmp_path, [row, row]))


def test_an_undecodable_clip_names_the_row_and_file(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF not really a wav file")
    row = {"id": "q7", "audio": "x.wav", "question": "q", "choices": ["a", "b"], "answer": "a"}
    rows = load_manifest(_manifest(tmp_path, [row]))
    tok = build_tiny_tokenizer(tiny_tokenizer_corpus(["q"]), 300)
    with pytest.raises(DataError, match="row 'q7': .*x.wav"):
        build_dataset(rows, tok, load_template("audio_cot_v1"))


def test_prompt_has_one_placeholder_per_frame(tmp_path):
    manifest = write_synthetic_set(tmp_path, 3, ["pitch"], seed=0)
    tok = build_tiny_tokenizer(tiny_tokenizer_corpus(["q"]), 300)
    ds = build_dataset(load_manifest(manifest), tok, load_template("audio_cot_v1"))
    prompt = ds[0]["prompt"]
    # 1.0 s at 24 kHz -> 100 frames -> 50, 25, 13, 7 placeholders
    assert prompt.count("<|cAUDIO|>") == 7
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<|begofcAUDIO|>" + "<|cAUDIO|>" * 7 + "<|endofcAUDIO|>Is the tone" in prompt


@pytest.mark.parametrize("rate, seconds", [(8000, 0.37), (16000, 1.0), (22050, 7.3), (44100, 30.01), (24000, 2.5)])
def test_placeholder_count_from_the_decoded_length_equals_resampling(tmp_path, rate, seconds):
    """The data pass counts placeholders from its native-rate decode; it must match decode -> 24 kHz -> count."""
    import numpy as np
    import soundfile as sf

    from grpo_audio.audio.covo import placeholders_for_file_length
    from grpo_audio.data.dataset import clip_placeholders

    path = tmp_path / "clip.wav"
    frames = int(round(seconds * rate))
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, frames).astype(np.float32), rate)
    assert placeholders_for_file_length(frames, rate) == clip_placeholders(str(path))
