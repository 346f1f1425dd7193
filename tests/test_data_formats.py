"""Dataset formats (JSONL, MMAU, MMAR, MMSU, AVQA, Hugging Face) into one row shape, and the recipe data sources.

Every audio file is real and written here: wav/flac/ogg/mp3, several rates, mono/stereo/6 channels, 8/16/24/32-bit
and float samples.
"""

import json

import numpy as np
import pytest
import soundfile as sf

from grpo_audio.data.formats import (
    load_avqa,
    load_hf,
    load_jsonl,
    load_mmar,
    load_mmau,
    load_mmsu,
    read_rows,
    replace_video_wording,
)
from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.records import detect_format
from grpo_audio.data.rows import DataError
from grpo_audio.data.sources import load_rows_for_recipe
from grpo_audio.recipe import RecipeError, load_recipe

# (file name, libsndfile format, subtype, rate, channels)
AUDIO_KINDS = [
    ("u8_8k.wav", "WAV", "PCM_U8", 8000, 1),
    ("s16_16k.wav", "WAV", "PCM_16", 16000, 1),
    ("s24_22k.wav", "WAV", "PCM_24", 22050, 2),
    ("s32_44k.wav", "WAV", "PCM_32", 44100, 1),
    ("f32_48k.wav", "WAV", "FLOAT", 48000, 2),
    ("f64_24k.wav", "WAV", "DOUBLE", 24000, 1),
    ("six_ch_48k.wav", "WAV", "PCM_16", 48000, 6),
    ("s16_32k.flac", "FLAC", "PCM_16", 32000, 1),
    ("s24_96k.flac", "FLAC", "PCM_24", 96000, 2),
    ("vorbis_44k.ogg", "OGG", "VORBIS", 44100, 2),
    ("opus_48k.ogg", "OGG", "OPUS", 48000, 1),
    ("mp3_44k.mp3", "MP3", "MPEG_LAYER_III", 44100, 1),
    ("mp3_16k_stereo.mp3", "MP3", "MPEG_LAYER_III", 16000, 2),
]


def tone(rate: int, seconds: float, channels: int = 1, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def write_audio(path, seconds=0.5, rate=16000, channels=1, fmt="WAV", subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(rate, seconds, channels), rate, format=fmt, subtype=subtype)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _writable(fmt, subtype):
    return fmt in sf.available_formats() and subtype in sf.available_subtypes(fmt)


def test_every_format_rate_and_channel_count_loads_through_the_recipe(tmp_path):
    rows = []
    expected = {}
    for i, (name, fmt, subtype, rate, channels) in enumerate(AUDIO_KINDS):
        if not _writable(fmt, subtype):
            continue
        seconds = 0.3 + 0.05 * i
        write_audio(tmp_path / "clips" / name, seconds, rate, channels, fmt, subtype)
        rows.append({"id": name, "audio": f"clips/{name}", "question": "What?", "choices": ["a", "b"], "answer": 0})
        expected[name] = seconds
    assert len(rows) >= 10
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    recipe = load_recipe(None, ["data.source=jsonl", f"data.path={manifest}"])
    kept, report = load_rows_for_recipe(recipe, tmp_path / "run")
    assert [r.id for r in kept] == [r["id"] for r in rows]
    assert report.kept == report.examined == len(rows) and not report.skipped
    for row in kept:
        # lossy codecs add encoder delay/padding (MP3 up to ~50 ms); PCM/FLAC are exact
        tolerance = 0.06 if row.id.endswith((".mp3", ".ogg")) else 1e-6
        assert abs(report.durations[row.id] - expected[row.id]) <= tolerance, row.id
    assert (tmp_path / "run" / "skipped.jsonl").read_text() == ""


def test_jsonl_rows_equal_the_manifest_loader_and_answers_resolve(tmp_path):
    write_audio(tmp_path / "a.wav")
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "1", "audio": "a.wav", "question": "q?", "choices": ["Man", "Woman"], "answer": "Man", "task": "s"},
            {"id": 2, "audio": "a.wav", "question": "q?", "choices": ["Man", "Woman"], "answer": 1},
            {"id": "3", "audio": "a.wav", "question": "q?", "choices": ["Man", "Woman"], "answer": None},
            {"id": "4", "audio": "a.wav", "question": "q?", "choices": ["Man", "Woman"], "answer": " woman "},
        ],
    )
    rows = load_jsonl(manifest)
    assert [r.answer for r in rows] == ["Man", "Woman", None, "Woman"]  # index -> text; case/space-insensitive
    assert rows[0].metadata == {"task": "s"} and rows[1].id == "2"
    strict = write_jsonl(tmp_path / "strict.jsonl", [json.loads(x) for x in manifest.read_text().splitlines()[:3]])
    # the manifest loader rejects the case-folded answer, and row 3 (no answer) unless unlabeled rows are allowed
    assert load_jsonl(strict) == load_manifest(strict, allow_unlabeled=True)
    with pytest.raises(DataError, match=r"strict.jsonl:3: row '3': no gold answer"):
        load_manifest(strict)
    assert rows[0].audio == str(tmp_path / "a.wav")


def test_synthetic_source_gives_the_same_rows_as_before(tmp_path):
    recipe = load_recipe(None, ["data.synthetic.num_questions=6"])
    rows, report = load_rows_for_recipe(recipe, tmp_path)
    assert rows == load_manifest(tmp_path / "data" / "manifest.jsonl")
    assert report.data_file == tmp_path / "data" / "manifest.jsonl"
    assert report.summary() == "data: 6 of 6 rows kept; none skipped"


MMAU_ITEM = {
    "id": "mmau-1",
    "audio_id": "./test-mini-audios/a.wav",
    "question": "Who is speaking?",
    "choices": ["Man", "Woman", "Child", "Robot"],
    "answer": "Woman",
    "dataset": "VoxCeleb",
    "task": "speech",
    "split": "test-mini",
    "category": "Speaker Identification",
    "sub-category": "Gender",
    "difficulty": "easy",
}


def test_mmau_audio_id_is_relative_to_the_root(tmp_path):
    write_audio(tmp_path / "audio_root" / "test-mini-audios" / "a.wav")
    bench = tmp_path / "bench" / "mmau-test-mini.json"
    bench.parent.mkdir()
    bench.write_text(json.dumps([MMAU_ITEM, {**MMAU_ITEM, "id": "mmau-2", "answer": "Robot"}]))
    rows = load_mmau(bench, root=tmp_path / "audio_root")
    assert [r.id for r in rows] == ["mmau-1", "mmau-2"]
    row = rows[0]
    assert row.audio == str(tmp_path / "audio_root" / "test-mini-audios" / "a.wav")
    assert row.answer == "Woman" and row.choices == MMAU_ITEM["choices"]
    assert row.metadata == {k: MMAU_ITEM[k] for k in ("dataset", "task", "split", "category", "sub-category",
                                                      "difficulty")}  # fmt: skip
    assert detect_format(bench) == "mmau"
    recipe = load_recipe(None, ["data.source=mmau", f"data.path={bench}", f"data.root={tmp_path / 'audio_root'}"])
    kept, _ = load_rows_for_recipe(recipe, tmp_path / "run")
    assert len(kept) == 2


def test_mmau_answer_must_be_a_choice(tmp_path):
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps([{**MMAU_ITEM, "answer": "Dog"}]))
    with pytest.raises(DataError, match=r"b.json\[0\]: row 'mmau-1': answer 'Dog' is not one of the choices"):
        load_mmau(bench)


def test_mmar_accepts_audio_path_and_falls_back_to_positions_for_ids(tmp_path):
    write_audio(tmp_path / "audio" / "x.flac", fmt="FLAC")
    item = {
        "audio_path": "./audio/x.flac",
        "question": "What plays?",
        "choices": ["Piano", "Guitar"],
        "answer": "Guitar",
        "modality": "music",
        "category": "Perception",
        "sub-category": "Instrument",
    }
    bench = tmp_path / "MMAR-meta.json"
    bench.write_text(json.dumps([item, item]))
    rows = load_mmar(bench)
    assert [r.id for r in rows] == ["0", "1"]
    assert rows[0].metadata["modality"] == "music" and rows[0].audio == str(tmp_path / "audio" / "x.flac")
    assert detect_format(bench) == "mmar"


def test_mmsu_choice_fields_letters_and_jsonl(tmp_path):
    write_audio(tmp_path / "a.wav")
    base = {"audio_path": "a.wav", "question": "What emotion?", "choice_a": "happy", "choice_b": "sad",
            "choice_c": "angry", "choice_d": "neutral", "task_name": "emotion", "category": "perception",
            "sub-category": "paralinguistics"}  # fmt: skip
    items = [
        {**base, "id": "t1", "answer_gt": "sad"},
        {**base, "id": "t2", "answer_gt": "C"},
        {"id": "t3", "audio": "a.wav", "question": "Q", "choices": ["x", "y", "z", "w"], "answer": 3},
    ]
    for name in ("mmsu.jsonl", "mmsu.json"):
        path = tmp_path / name
        if name.endswith(".jsonl"):
            write_jsonl(path, items)
        else:
            path.write_text(json.dumps(items))
        rows = load_mmsu(path)
        assert [r.answer for r in rows] == ["sad", "angry", "w"]
        assert rows[0].choices == ["happy", "sad", "angry", "neutral"]
        assert rows[0].metadata == {"task_name": "emotion", "category": "perception",
                                    "sub-category": "paralinguistics"}  # fmt: skip
        assert detect_format(path) == "mmsu"


def test_avqa_index_answers_and_video_wording(tmp_path):
    write_audio(tmp_path / "clips" / "-abc_000010.wav")
    item = {"id": 7, "video_name": "-abc_000010", "video_id": 3, "question_text": "What animal is in the video?",
            "multi_choice": ["dog", "cat", "cow", "horse"], "answer": 2, "question_relation": "View",
            "question_type": "Which"}  # fmt: skip
    bench = tmp_path / "train_qa.json"
    bench.write_text(json.dumps([item]))
    (row,) = load_avqa(bench, root=tmp_path / "clips")
    assert row.id == "7" and row.answer == "cow"
    assert row.audio == str(tmp_path / "clips" / "-abc_000010.wav")
    assert row.question == "What animal is in the audio?"
    assert row.metadata["question_original"] == "What animal is in the video?"
    assert row.metadata["question_type"] == "Which" and row.metadata["video_name"] == "-abc_000010"
    (kept,) = load_avqa(bench, root=tmp_path / "clips", replace_video=False)
    assert kept.question == "What animal is in the video?" and "question_original" not in kept.metadata
    root = tmp_path / "clips"
    recipe = load_recipe(
        None, ["data.source=avqa", f"data.path={bench}", f"data.root={root}", "data.avqa_replace_video=false"]
    )
    rows, _ = load_rows_for_recipe(recipe, tmp_path / "run")
    assert rows[0].question.endswith("video?")
    assert detect_format(bench) == "avqa"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("What is in the video?", "What is in the audio?"),
        ("Video: what sound?", "Audio: what sound?"),
        ("In these videos", "In these audios"),
        ("VIDEO clip", "AUDIO clip"),
        ("videotape", "videotape"),  # whole words only
    ],
)
def test_video_wording_replacement(text, expected):
    assert replace_video_wording(text) == expected


def test_avqa_answer_must_be_an_index(tmp_path):
    bench = tmp_path / "a.json"
    bench.write_text(json.dumps([{"id": 1, "video_name": "v", "question_text": "q", "multi_choice": ["a", "b"],
                                  "answer": "a"}]))  # fmt: skip
    with pytest.raises(DataError, match="answer' must be a 0-based index"):
        load_avqa(bench)


def test_hf_dataset_with_audio_column_bytes_paths_and_arrays(tmp_path):
    datasets = pytest.importorskip("datasets")
    flac = write_audio(tmp_path / "src" / "b.flac", 0.4, 22050, fmt="FLAC")
    wav = write_audio(tmp_path / "src" / "a.wav", 0.6, 16000)
    table = {
        "id": ["r1", "r2"],
        "audio": [{"bytes": flac.read_bytes(), "path": "b.flac"}, {"bytes": None, "path": str(wav)}],
        "question": ["Which?", "Which?"],
        "choices": [["a", "b"], ["a", "b"]],
        "answer": ["a", "b"],
        "task": ["sound", "music"],
    }
    ds = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"test": ds, "train": ds}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"splits \['test', 'train'\]; set data.split"):
        load_hf(tmp_path / "saved", tmp_path / "cache")
    rows = load_hf(tmp_path / "saved", tmp_path / "cache", split="test")
    assert [r.id for r in rows] == ["r1", "r2"] and rows[1].answer == "b"
    assert rows[0].metadata == {"task": "sound"}
    for row, source in zip(rows, (flac, wav), strict=True):
        # embedded bytes land in the cache; either way the file decodes to the source's samples
        assert sf.read(row.audio)[0].shape == sf.read(str(source))[0].shape
    assert rows[0].audio.startswith(str(tmp_path / "cache"))

    # decoded arrays (no Audio feature) are written into the cache as float WAV
    arrays = datasets.Dataset.from_dict({
        "audio": [{"array": tone(8000, 0.25).tolist(), "sampling_rate": 8000}],
        "question": ["Q"], "choices": [["x", "y"]], "answer": ["y"],
    })  # fmt: skip
    arrays.save_to_disk(str(tmp_path / "arrays"))
    (row,) = load_hf(tmp_path / "arrays", tmp_path / "cache2")
    assert row.id == "0"
    data, rate = sf.read(row.audio)
    assert rate == 8000 and data.shape == (2000,)

    recipe = load_recipe(None, ["data.source=hf", f"data.path={tmp_path / 'saved'}", "data.split=train"])
    kept, report = load_rows_for_recipe(recipe, tmp_path / "run")
    assert len(kept) == 2 and kept[0].audio.startswith(str(tmp_path / "run" / "data" / "hf_audio"))


def test_hf_parquet_file_with_path_strings_and_a_custom_audio_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    write_audio(tmp_path / "clip.wav")
    ds = datasets.Dataset.from_dict({"wav": ["clip.wav"], "question": ["Q"], "choices": [["x", "y"]], "answer": ["x"]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match="no audio column 'audio'"):
        load_hf(tmp_path / "d.parquet", tmp_path / "cache")
    (row,) = load_hf(tmp_path / "d.parquet", tmp_path / "cache", audio_column="wav")
    assert row.audio == str(tmp_path / "clip.wav")
    assert detect_format(tmp_path / "d.parquet") == "hf"


def test_max_samples_counts_usable_rows(tmp_path):
    write_audio(tmp_path / "ok.wav")
    rows = [{"id": f"r{i}", "audio": "ok.wav" if i % 2 else "missing.wav", "question": "q", "choices": ["a", "b"],
             "answer": "a"} for i in range(10)]  # fmt: skip
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    recipe = load_recipe(
        None, ["data.source=jsonl", f"data.path={manifest}", "data.max_samples=3", "data.on_bad_audio=skip"]
    )
    kept, report = load_rows_for_recipe(recipe, tmp_path / "run")
    assert [r.id for r in kept] == ["r1", "r3", "r5"]
    assert report.examined == 6 and report.counts == {"missing_file": 3}


def test_read_rows_collects_every_row_problem(tmp_path):
    write_audio(tmp_path / "a.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "1", "audio": "a.wav", "question": "q", "choices": ["a", "b"]}\n'
        "not json\n"
        '{"id": "1", "audio": "a.wav", "question": "q", "choices": ["a", "b"]}\n'
        '{"id": "3", "audio": "a.wav", "question": "q", "choices": []}\n'
    )
    problems = []
    rows = read_rows("jsonl", manifest, problems=problems)
    assert [r.row.id for r in rows] == ["1"]
    assert [(p.where.rsplit(":", 1)[1], p.kind) for p in problems] == [
        ("2", "bad_json"), ("3", "duplicate_id"), ("4", "empty_choices")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.source=mmau"], "data.source is 'mmau' but data.path is not set"),
        (["data.source=mmsu", "data.path=/nonexistent/x.json"], "data.path: file or dataset directory not found"),
        (["data.source=avqa", "data.path=/nonexistent/x.json"], "data.path: file not found"),
        (["data.source=hf", "data.path=/nonexistent/ds"], "data.path: dataset not found"),
        (["data.root=/nonexistent/root"], "data.root: directory not found"),
        (["data.min_duration_s=0.001"], "must be at least 0.01"),
        (["data.max_duration_s=0.005"], "must be greater than data.min_duration_s"),
        (["data.long_clips=truncate"], "needs data.max_duration_s"),
        (["data.max_samples=0"], "must be at least 1"),
        (["data.on_bad_audio=ignore"], "data.on_bad_audio: expected one of 'error', 'skip'"),
        (["data.source=parquet"], "data.source: expected one of"),
    ],
)
def test_recipe_data_section_is_checked(overrides, message):
    with pytest.raises(RecipeError, match=None) as info:
        load_recipe(None, overrides)
    assert message in str(info.value)
