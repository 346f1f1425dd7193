"""The bad-input corpus: every kind of broken or unusual input and its documented outcome.

Audio kinds (outcome with the default policy / with ``data.on_bad_audio=skip``, ``short_clips=skip``):
an error naming the row and the file / a skip counted under its reason and logged in ``skipped.jsonl``; or accepted
(6 channels, a FLAC or MP3 named .wav, a unicode path, digital silence, a 10 min clip without a length limit).
Row kinds (malformed JSON line, answer not among the choices, empty choices, duplicate ids, ...) are an error naming
the file and line, whatever the audio policy (``data.on_bad_row=skip`` skips them: tests/test_bad_recipes_and_rows.py).
``grpo-audio data check`` lists them all.
"""

import json

import numpy as np
import pytest
import soundfile as sf

from grpo_audio.data.check import main as check_main
from grpo_audio.data.rows import DataError
from grpo_audio.data.sources import load_rows_for_recipe
from grpo_audio.recipe import load_recipe

RATE = 16000


def _tone(seconds: float, channels: int = 1) -> np.ndarray:
    wave = (0.4 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def _wav_bytes(tmp_path, seconds=0.5, subtype="PCM_16", fmt="WAV") -> bytes:
    scratch = tmp_path / f"scratch.{fmt.lower()}"
    sf.write(str(scratch), _tone(seconds), RATE, format=fmt, subtype=subtype)
    data = scratch.read_bytes()
    scratch.unlink()
    return data


# --- makers: each writes the clip for one kind and returns its file name (relative to tmp_path) -------------------


def truncated_header(d):
    (d / "clip.wav").write_bytes(_wav_bytes(d)[:30])
    return "clip.wav"


def truncated_data(d):
    data = _wav_bytes(d)
    (d / "clip.wav").write_bytes(data[: len(data) // 2])
    return "clip.wav"


def truncated_flac(d):
    data = _wav_bytes(d, fmt="FLAC")
    (d / "clip.flac").write_bytes(data[: len(data) // 2])
    return "clip.flac"


def zero_bytes(d):
    (d / "clip.wav").write_bytes(b"")
    return "clip.wav"


def no_frames(d):
    sf.write(str(d / "clip.wav"), np.zeros(0, dtype=np.float32), RATE)
    return "clip.wav"


def nan_samples(d):
    wave = _tone(0.5)
    wave[123] = np.nan
    sf.write(str(d / "clip.wav"), wave, RATE, subtype="FLOAT")
    return "clip.wav"


def inf_samples(d):
    wave = _tone(0.5)
    wave[7] = -np.inf
    sf.write(str(d / "clip.wav"), wave, RATE, subtype="FLOAT")
    return "clip.wav"


def text_as_wav(d):
    (d / "clip.wav").write_text("this is a transcript, not audio\n" * 20)
    return "clip.wav"


def missing_file(d):
    return "no_such_clip.wav"


def directory_as_file(d):
    (d / "clip.wav").mkdir()
    return "clip.wav"


def one_ms_clip(d):
    sf.write(str(d / "clip.wav"), _tone(0.001), RATE)
    return "clip.wav"


def six_channels(d):
    sf.write(str(d / "clip.wav"), _tone(0.5, 6), RATE)
    return "clip.wav"


def flac_named_wav(d):
    (d / "clip.wav").write_bytes(_wav_bytes(d, fmt="FLAC"))
    return "clip.wav"


def mp3_named_wav(d):
    (d / "clip.wav").write_bytes(_wav_bytes(d, fmt="MP3", subtype="MPEG_LAYER_III"))
    return "clip.wav"


def unicode_path(d):
    (d / "音频 clips").mkdir()
    sf.write(str(d / "音频 clips" / "naïve été.wav"), _tone(0.5), RATE)
    return "音频 clips/naïve été.wav"


def digital_silence(d):
    sf.write(str(d / "clip.wav"), np.zeros(RATE // 2, dtype=np.float32), RATE)
    return "clip.wav"


def ten_minutes(d):
    sf.write(str(d / "clip.wav"), np.zeros(600 * 8000, dtype=np.int16), 8000, subtype="PCM_16")
    return "clip.wav"


# (maker, reason code when bad, or None when the clip is accepted)
AUDIO_CASES = [
    (truncated_header, "unreadable"),
    (truncated_data, "truncated"),
    (truncated_flac, "unreadable"),
    (zero_bytes, "empty_file"),
    (no_frames, "no_samples"),
    (nan_samples, "non_finite"),
    (inf_samples, "non_finite"),
    (text_as_wav, "unreadable"),
    (missing_file, "missing_file"),
    (directory_as_file, "not_a_file"),
    (one_ms_clip, "too_short"),
    (six_channels, None),
    (flac_named_wav, None),
    (mp3_named_wav, None),
    (unicode_path, None),
    (digital_silence, None),
    (ten_minutes, None),
]
SKIP_ALL = ["data.on_bad_audio=skip", "data.short_clips=skip"]


def _manifest(d, rows) -> str:
    path = d / "data.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _corpus(d, audio: str):
    sf.write(str(d / "good.wav"), _tone(0.5), RATE)
    return _manifest(
        d,
        [
            {"id": "good", "audio": "good.wav", "question": "Which?", "choices": ["a", "b"], "answer": "a"},
            {"id": "bad", "audio": audio, "question": "Which?", "choices": ["a", "b"], "answer": "b"},
        ],
    )


def _recipe(manifest, *overrides):
    return load_recipe(None, ["data.source=jsonl", f"data.path={manifest}", *overrides])


@pytest.mark.parametrize(("maker", "reason"), AUDIO_CASES, ids=[m.__name__ for m, _ in AUDIO_CASES])
def test_bad_audio_is_an_error_naming_row_and_file_or_a_counted_skip(tmp_path, maker, reason):
    audio = maker(tmp_path)
    manifest = _corpus(tmp_path, audio)
    if reason is None:
        rows, report = load_rows_for_recipe(_recipe(manifest), tmp_path / "run")
        assert [r.id for r in rows] == ["good", "bad"] and not report.skipped
        return
    with pytest.raises(DataError) as info:
        load_rows_for_recipe(_recipe(manifest), tmp_path / "run")
    message = str(info.value)
    assert "data.jsonl:2: row 'bad'" in message and audio in message

    rows, report = load_rows_for_recipe(_recipe(manifest, *SKIP_ALL), tmp_path / "run2")
    assert [r.id for r in rows] == ["good"]
    assert report.counts == {reason: 1}
    assert f"skipped 1 ({reason} 1)" in report.summary() and "of 2 rows kept" in report.summary()
    (logged,) = [json.loads(x) for x in (tmp_path / "run2" / "skipped.jsonl").read_text().splitlines()]
    assert logged["id"] == "bad" and logged["reason"] == reason and logged["audio"].endswith(audio)
    assert logged["where"].endswith("data.jsonl:2")


def test_length_policy_for_a_ten_minute_clip(tmp_path):
    manifest = _corpus(tmp_path, ten_minutes(tmp_path))
    limit = ["data.max_duration_s=30"]
    with pytest.raises(DataError, match=r"row 'bad': audio file '.*clip.wav': 600.00 s is longer than .*=30"):
        load_rows_for_recipe(_recipe(manifest, *limit), tmp_path / "r1")
    rows, report = load_rows_for_recipe(_recipe(manifest, *limit, "data.long_clips=skip"), tmp_path / "r2")
    assert [r.id for r in rows] == ["good"] and report.counts == {"too_long": 1}

    rows, report = load_rows_for_recipe(_recipe(manifest, *limit, "data.long_clips=truncate"), tmp_path / "r3")
    assert [r.id for r in rows] == ["good", "bad"] and not report.skipped
    cut = rows[1]
    assert cut.metadata["audio_original"] == str(tmp_path / "clip.wav")
    assert cut.audio.startswith(str(tmp_path / "r3" / "data" / "truncated"))
    info = sf.info(cut.audio)
    assert info.samplerate == 24000 and info.frames == 30 * 24000
    (logged,) = [json.loads(x) for x in (tmp_path / "r3" / "truncated.jsonl").read_text().splitlines()]
    assert logged["id"] == "bad" and logged["duration_s"] == 600.0 and logged["kept_s"] == 30.0
    assert "truncated 1 long clip(s)" in report.summary()


def test_one_ms_clip_under_a_larger_minimum(tmp_path):
    sf.write(str(tmp_path / "short.wav"), _tone(0.2), RATE)
    manifest = _corpus(tmp_path, "short.wav")
    with pytest.raises(DataError, match=r"row 'bad'.*short.wav.*shorter than data.min_duration_s=0.5"):
        load_rows_for_recipe(_recipe(manifest, "data.min_duration_s=0.5"), tmp_path / "r1")


# (description, manifest line for row 2, expected message): row problems are errors even when skipping is allowed
ROW_CASES = [
    ("malformed JSON line", '{"id": "x", "audio": "good.wav",', r"data.jsonl:2: not valid JSON"),
    ("not an object", '["id", "audio"]', r"data.jsonl:2: expected a JSON object, got list"),
    ("answer not among choices", {"answer": "c"}, r"data.jsonl:2: row 'x': answer 'c' is not one of the choices"),
    ("answer index out of range", {"answer": 5}, r"data.jsonl:2: row 'x': answer index 5 is outside the 2 choices"),
    ("empty choices", {"choices": []}, r"data.jsonl:2: row 'x': field 'choices' is empty"),
    ("one choice", {"choices": ["a"]}, r"row 'x': field 'choices' must be a list of at least 2 strings"),
    ("duplicate id", {"id": "good"}, r"data.jsonl:2: row 'good': duplicate id 'good' \(first at .*data.jsonl:1\)"),
    ("missing question", {"question": None}, r"data.jsonl:2: row 'x': missing field 'question'"),
    ("blank question", {"question": "  "}, r"row 'x': field 'question' must be a non-empty string"),
    ("missing id", {"id": None}, r"data.jsonl:2: missing field 'id'"),
    ("missing audio", {"audio": None}, r"data.jsonl:2: row 'x': missing field 'audio'"),
    ("audio not a path", {"audio": 3}, r"row 'x': field 'audio' must be a non-empty audio path"),
]


@pytest.mark.parametrize(("what", "line", "message"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_rows_are_errors_naming_file_and_line(tmp_path, what, line, message):
    sf.write(str(tmp_path / "good.wav"), _tone(0.5), RATE)
    good = {"id": "good", "audio": "good.wav", "question": "Which?", "choices": ["a", "b"], "answer": "a"}
    if isinstance(line, dict):
        row = {**good, "id": "x", **line}
        line = json.dumps({k: v for k, v in row.items() if v is not None})
    (tmp_path / "data.jsonl").write_text(json.dumps(good) + "\n" + line + "\n")
    for overrides in ([], SKIP_ALL):
        with pytest.raises(DataError, match=message):
            load_rows_for_recipe(_recipe(tmp_path / "data.jsonl", *overrides), tmp_path / "run")


def test_data_check_on_a_clean_manifest(tmp_path, capsys):
    for name, seconds in (("a.wav", 0.5), ("b.wav", 2.0), ("c.wav", 12.0)):
        sf.write(str(tmp_path / name), _tone(seconds), RATE)
    manifest = _manifest(tmp_path, [
        {"id": str(i), "audio": name, "question": "Which?", "choices": ["a", "b"], "answer": "a", "task": task}
        for i, (name, task) in enumerate([("a.wav", "sound"), ("b.wav", "music"), ("c.wav", "sound")])
    ])  # fmt: skip
    assert check_main([manifest]) == 0
    out = capsys.readouterr().out
    assert "rows: 3 read, 3 usable, 0 with problems" in out
    assert "task: sound 2, music 1" in out
    assert "duration: 3 clips, min 0.500 s" in out and "10-30 s |      1 #" in out
    assert "sample rates: 16000 Hz 3" in out
    assert "result: clean, 3 rows ready" in out


def test_data_check_lists_every_problem_of_a_dirty_manifest(tmp_path, capsys):
    sf.write(str(tmp_path / "good.wav"), _tone(0.5), RATE)
    zero_bytes(tmp_path)
    (tmp_path / "nan").mkdir()
    nan_samples(tmp_path / "nan")
    good = {"question": "Which?", "choices": ["a", "b"], "answer": "a"}
    lines = [
        json.dumps({"id": "ok", "audio": "good.wav", **good}),
        json.dumps({"id": "empty", "audio": "clip.wav", **good}),
        json.dumps({"id": "nan", "audio": "nan/clip.wav", **good}),
        json.dumps({"id": "gone", "audio": "gone.wav", **good}),
        json.dumps({"id": "ok", "audio": "good.wav", **good}),
        json.dumps({"id": "wrong", "audio": "good.wav", **good, "answer": "z"}),
        "{oops",
    ]
    (tmp_path / "dirty.jsonl").write_text("\n".join(lines) + "\n")
    assert check_main([str(tmp_path / "dirty.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "rows: 7 read, 1 usable, 6 with problems" in out
    for expected in (
        "[empty_file] " + str(tmp_path / "dirty.jsonl") + ":2: row 'empty'",
        "[non_finite] " + str(tmp_path / "dirty.jsonl") + ":3: row 'nan'",
        "[missing_file] " + str(tmp_path / "dirty.jsonl") + ":4: row 'gone'",
        "[duplicate_id] " + str(tmp_path / "dirty.jsonl") + ":5: row 'ok': duplicate id 'ok'",
        "[answer_not_in_choices] " + str(tmp_path / "dirty.jsonl") + ":6: row 'wrong'",
        "[bad_json] " + str(tmp_path / "dirty.jsonl") + ":7: not valid JSON",
    ):
        assert expected in out, expected
    assert "-> an error in training" in out and "result: 6 problem(s) found" in out


def test_data_check_on_a_recipe_reports_the_policy_outcome(tmp_path, capsys):
    manifest = _corpus(tmp_path, ten_minutes(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  source: jsonl\n  path: {manifest}\n  max_duration_s: 30\n  long_clips: truncate\n")
    assert check_main([str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "length policy (1):" in out and "[too_long]" in out and "-> truncated" in out
    assert ">= 5 min |      1" in out


@pytest.mark.parametrize(
    "make_target, message",
    [
        (lambda d: d / "nope.jsonl", "file not found"),
        (lambda d: _write(d / "broken.json", "[{"), "not valid JSON"),
        (lambda d: _write(d / "odd.json", '[{"foo": 1}]'), "cannot tell the data format"),
        (lambda d: _write(d / "r.yaml", "data:\n  sourc: jsonl\n"), "did you mean 'data.source'"),
        (lambda d: _write(d / "empty.jsonl", "\n"), "no rows"),
    ],
)
def test_data_check_unusable_input_exits_2(tmp_path, capsys, make_target, message):
    assert check_main([str(make_target(tmp_path))]) == 2
    assert message in capsys.readouterr().err


def _write(path, text):
    path.write_text(text)
    return path
