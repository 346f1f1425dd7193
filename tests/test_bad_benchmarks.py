"""Benchmark files as they are really distributed, quirks included (benchmarks.md), never a silently wrong run.

* MMSU: exports write ``/audio/<id>.wav`` relative to the dataset root; the release is a Hugging Face dataset (parquet
  with an embedded Audio column); two-option items leave ``choice_c``/``choice_d`` empty.
* MMAR: the older ``MMAR-meta.json`` has rows whose answer is not among the choices: training refuses them naming
  file, row and count; evaluation scores them as the official script does.
* MMAU: some rows carry ``category`` as a one-element list: normalised to the string, one slice per category.

Every fixture is written here in the benchmark's own field layout.
"""

import json

import numpy as np
import pytest
import soundfile as sf

from grpo_audio.data.check import main as check_main
from grpo_audio.data.formats import (
    OUTSIDE_FLAG,
    load_hf,
    load_mmau,
    load_mmsu,
    read_rows,
    slice_value,
)
from grpo_audio.data.records import detect_format
from grpo_audio.data.rows import DataError
from grpo_audio.data.sources import load_rows_for_recipe
from grpo_audio.evaluation.metrics import compute_metrics
from grpo_audio.evaluation.scoring import score_mmau, score_mmsu
from grpo_audio.recipe import load_recipe


def write_clip(path, seconds=0.3, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def recipe_for(fmt, path, root=None, *extra):
    overrides = [f"data.source={fmt}", f"data.path={path}", *extra]
    return load_recipe(None, overrides + ([f"data.root={root}"] if root else []))


# --- MMSU ----------------------------------------------------------------------------------------------------------

MMSU_META = {"task_name": "emotion_recognition", "category": "perception", "sub-category": "paralinguistics",
             "sub-sub-category": "emotion", "linguistics_sub_discipline": "paralinguistics"}  # fmt: skip


def mmsu_row(rid, **fields):
    """One MMSU row in the release's column layout (JSONL export: audio_path instead of the Audio column)."""
    row = {"id": rid, "audio_path": f"/audio/{rid}.wav", "question": "What is the speaker's emotion?",
           "choice_a": "happy", "choice_b": "sad", "choice_c": "angry", "choice_d": "neutral",
           "answer_gt": "sad"}  # fmt: skip
    return {**row, **fields, **MMSU_META}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mmsu_leading_slash_paths_are_relative_to_data_root(tmp_path):
    root = tmp_path / "MMSU"
    for rid in ("q1", "q2"):
        write_clip(root / "audio" / f"{rid}.wav")
    bench = write_jsonl(root / "mmsu.jsonl", [mmsu_row("q1"), mmsu_row("q2")])
    rows, report = load_rows_for_recipe(recipe_for("mmsu", bench, root), tmp_path / "run")
    assert [r.audio for r in rows] == [str(root / "audio" / "q1.wav"), str(root / "audio" / "q2.wav")]
    assert report.kept == 2 and not report.skipped

    # Without data.root the path is absolute; it does not exist, the root-relative one does: refused, naming the fix
    with pytest.raises(DataError) as err:
        load_mmsu(bench)
    message = str(err.value)
    assert message.startswith(f"{bench}:1: row 'q1': audio path '/audio/q1.wav' does not exist")
    assert f"set data.root (--root) to {root}" in message and "\n" not in message


def test_mmsu_absolute_paths_stay_absolute_without_a_root(tmp_path):
    clip = write_clip(tmp_path / "elsewhere" / "x.wav")
    bench = write_jsonl(tmp_path / "data" / "mmsu.jsonl", [mmsu_row("q1", audio_path=str(clip))])
    assert load_mmsu(bench)[0].audio == str(clip)


@pytest.mark.parametrize(
    ("choice_c", "choice_d", "answer_gt", "expected"),
    [
        ("", "", "sad", (["happy", "sad"], "sad")),  # a two-option item as exported
        (None, None, "B", (["happy", "sad"], "sad")),  # nulls (parquet) and an option letter
        ("angry", "", "angry", (["happy", "sad", "angry"], "angry")),
        ("angry", "neutral", "D", (["happy", "sad", "angry", "neutral"], "neutral")),
        ("", "neutral", "sad", "mmsu.jsonl:1: row 'q1': option 'choice_c' is empty but a later option is not"),
        ("", "", "C", "mmsu.jsonl:1: row 'q1': answer 'C' is not one of the choices ['happy', 'sad']"),
        ("  ", None, "neutral", "mmsu.jsonl:1: row 'q1': answer 'neutral' is not one of the choices"),
    ],
)
def test_mmsu_empty_options_are_not_choices(tmp_path, choice_c, choice_d, answer_gt, expected):
    bench = write_jsonl(
        tmp_path / "mmsu.jsonl", [mmsu_row("q1", choice_c=choice_c, choice_d=choice_d, answer_gt=answer_gt)]
    )
    if isinstance(expected, str):
        with pytest.raises(DataError) as err:
            load_mmsu(bench, root=tmp_path)
        assert str(err.value).startswith(f"{tmp_path}/{expected}") and "\n" not in str(err.value)
    else:
        (row,) = load_mmsu(bench, root=tmp_path)
        assert (row.choices, row.answer) == expected


def write_mmsu_parquet(path, rows, clips):
    """The release's layout: an embedded Audio column plus MMSU's text columns."""
    import datasets  # a core dependency: a missing install must fail, not skip

    columns = ["id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer_gt", *MMSU_META]
    table = {c: [r[c] for r in rows] for c in columns}
    table["audio"] = [{"bytes": clip.read_bytes(), "path": clip.name} for clip in clips]
    datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio()).to_parquet(str(path))
    return path


def test_mmsu_parquet_release_loads_as_mmsu(tmp_path):
    clips = [write_clip(tmp_path / "src" / f"{i}.wav", 0.2 + 0.1 * i) for i in range(3)]
    rows = [mmsu_row("q0"), mmsu_row("q1", choice_c="", choice_d="", answer_gt="happy"),
            mmsu_row("q2", choice_c=None, choice_d=None, answer_gt="sad")]  # fmt: skip
    bench = write_mmsu_parquet(tmp_path / "mmsu" / "test-00000-of-00001.parquet", rows, clips)
    assert detect_format(bench) == "mmsu"
    assert detect_format(bench.parent) == "mmsu"  # a directory of the release's parquet files

    kept, report = load_rows_for_recipe(recipe_for("mmsu", bench), tmp_path / "run")
    assert [(r.id, r.choices, r.answer) for r in kept] == [
        ("q0", ["happy", "sad", "angry", "neutral"], "sad"), ("q1", ["happy", "sad"], "happy"),
        ("q2", ["happy", "sad"], "sad"),
    ]  # fmt: skip
    assert kept[0].metadata == MMSU_META
    for row, clip in zip(kept, clips, strict=True):  # embedded audio written once under the run directory
        assert row.audio.startswith(str(tmp_path / "run" / "data" / "hf_audio"))
        np.testing.assert_array_equal(sf.read(row.audio)[0], sf.read(str(clip))[0])
    assert report.kept == 3

    # format 'hf' wants question/choices/answer columns: refused in one line, pointing at 'mmsu'
    with pytest.raises(DataError) as err:
        load_hf(bench, tmp_path / "cache")
    assert str(err.value) == (
        f"{bench}[0]: row 'q0': missing column 'choices' (the columns are MMSU's: use data.source=mmsu)"
    )


# --- MMAR ----------------------------------------------------------------------------------------------------------


def mmar_item(rid, answer="Guitar", **fields):
    """One row of MMAR-meta.json(l)."""
    return {"id": rid, "audio_path": f"./audio/{rid}.wav", "question": "Which instrument plays the melody?",
            "choices": ["Piano", "Guitar", "Violin"], "answer": answer, "modality": "music",
            "category": "Perception Layer", "sub-category": "Instrument", "language": "en",
            "source": "youtube", **fields}  # fmt: skip


@pytest.fixture
def old_mmar(tmp_path):
    """The older MMAR-meta.json (a JSON list) with two rows whose answer is not among the choices."""
    items = [mmar_item("m0"), mmar_item("m1", answer="Flute"), mmar_item("m2"), mmar_item("m3", answer="the Cello")]
    for item in items:
        write_clip(tmp_path / "audio" / f"{item['id']}.wav")
    bench = tmp_path / "MMAR-meta.json"
    bench.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return bench


def test_training_refuses_answers_outside_the_choices_naming_file_rows_and_count(old_mmar, tmp_path):
    with pytest.raises(DataError) as err:
        load_rows_for_recipe(recipe_for("mmar", old_mmar), tmp_path / "run")
    message = str(err.value)
    assert "2 bad rows" in message and "\n" not in message  # one line: the count, then each row named
    assert f"{old_mmar}[1]: row 'm1': answer 'Flute' is not one of the choices" in message
    assert f"{old_mmar}[3]: row 'm3': answer 'the Cello' is not one of the choices" in message
    # with the skip policy they are left out and counted
    rows, report = load_rows_for_recipe(recipe_for("mmar", old_mmar, None, "data.on_bad_row=skip"), tmp_path / "r2")
    assert [r.id for r in rows] == ["m0", "m2"] and report.counts == {"answer_not_in_choices": 2}


def test_evaluation_keeps_answers_outside_the_choices(old_mmar):
    rows = [r.row for r in read_rows("mmar", old_mmar, answers_outside_choices="keep")]
    assert [(r.id, r.answer, r.metadata.get(OUTSIDE_FLAG, False)) for r in rows] == [
        ("m0", "Guitar", False), ("m1", "Flute", True), ("m2", "Guitar", False), ("m3", "the Cello", True)
    ]  # fmt: skip
    with pytest.raises(DataError, match=r"MMAR-meta.json\[1\]: row 'm1': answer 'Flute' is not one of the choices"):
        read_rows("mmar", old_mmar)  # the default (training) is to refuse


CHOICES = ["Piano", "Guitar", "Violin"]


@pytest.mark.parametrize(
    ("completion", "answer", "correct", "status"),
    [
        ("<answer>Guitar</answer>", "Flute", False, "wrong"),  # names a choice: the gold words are absent
        ("<answer>Flute</answer>", "Flute", True, "correct"),  # the official rule accepts the gold text itself
        ("<answer>the cello</answer>", "the Cello", True, "correct"),
        ("<answer>a cello, not a piano</answer>", "the Cello", False, "wrong"),  # names the choice Piano
        ("", "Flute", False, "missing"),
    ],
)
def test_an_answer_outside_the_choices_is_scored_by_the_official_token_rule(completion, answer, correct, status):
    scored = score_mmau(completion, answer, CHOICES)
    assert (scored.correct, scored.status) == (correct, status)


def test_mmsu_rule_never_credits_an_answer_outside_the_options():
    assert not score_mmsu("B", "Flute", CHOICES).correct and score_mmsu("B", "Guitar", CHOICES).correct


# --- MMAU: list-valued category ------------------------------------------------------------------------------------

MMAU_ITEM = {"id": "a0", "audio_id": "./test-mini-audios/a0.wav", "question": "What is heard?",
             "choices": ["Rain", "Applause"], "answer": "Rain", "dataset": "Clotho", "task": "sound",
             "split": "test-mini", "category": "Sound", "sub-category": "Acoustic scene",
             "difficulty": "easy"}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Sound", "Sound"), (["Sound"], "Sound"), (["Sound", "Music"], "Sound, Music"), ([], None), ([7], "7")],
)
def test_mmau_list_categories_are_normalised(tmp_path, value, expected):
    bench = tmp_path / "mmau.json"
    bench.write_text(json.dumps([{**MMAU_ITEM, "category": value, "sub-category": [value] if value else value}]))
    (row,) = load_mmau(bench)
    assert row.metadata.get("category") == expected == slice_value(value)
    assert ("category" in row.metadata) == (expected is not None)


@pytest.fixture
def mixed_mmau(tmp_path):
    items = [MMAU_ITEM, {**MMAU_ITEM, "id": "a1", "category": ["Sound"]}, {**MMAU_ITEM, "id": "a2", "task": ["music"],
             "category": ["Music"]}]  # fmt: skip
    for item in items:
        write_clip(tmp_path / item["audio_id"])
    bench = tmp_path / "mmau-test-mini.json"
    bench.write_text(json.dumps(items))
    return bench


def test_list_and_string_categories_make_one_slice_in_eval_and_data_check(mixed_mmau, capsys):
    rows = load_mmau(mixed_mmau)
    records = [{"id": r.id, "correct": r.id != "a1", "status": "correct", "metadata": r.metadata} for r in rows]
    groups = compute_metrics(records, 1)["groups"]
    assert sorted(groups["category"]) == ["Music", "Sound"] and groups["category"]["Sound"]["items"] == 2
    assert sorted(groups["task"]) == ["music", "sound"]
    assert check_main([str(mixed_mmau), "--format", "mmau"]) == 0
    printed = capsys.readouterr().out
    assert "category: Sound 2, Music 1" in printed and "task: sound 2, music 1" in printed


# --- end to end: evaluation on the old MMAR file, with a tokenizer that has no chat template ----------------------


@pytest.fixture(scope="module")
def templateless_model(tmp_path_factory):
    """A tiny saved model whose tokenizer carries no chat template (as the released tokenizer may)."""
    from helpers.tiny_model import harness_tokenizer_and_model

    from grpo_audio.data.manifest import load_manifest
    from grpo_audio.data.synthetic import write_synthetic_set
    from grpo_audio.train.run_dir import save_model_atomic

    d = tmp_path_factory.mktemp("templateless")
    rows = load_manifest(write_synthetic_set(d / "audio", 3, ["pitch"], seed=0))
    tokenizer, model = harness_tokenizer_and_model(rows)
    tokenizer.chat_template = None
    save_model_atomic(model, tokenizer, d / "model")
    return d / "model"


def test_eval_scores_the_old_mmar_file_and_counts_answers_outside_the_choices(templateless_model, old_mmar, capsys):
    from grpo_audio.evaluation.cli import main

    out = old_mmar.parent / "eval"
    argv = ["--model", str(templateless_model), "--benchmark", str(old_mmar), "--out", str(out),
            "--max-new-tokens", "4", "--batch-size", "4"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"]["format"] == "mmar" and metrics["benchmark"]["answers_outside_choices"] == 2
    assert metrics["overall"]["items"] == 4  # every row is in the denominator
    predictions = {p["id"]: p for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert predictions["m1"]["answer"] == "Flute" and predictions["m1"]["metadata"][OUTSIDE_FLAG] is True
    assert "items whose gold answer is not among their choices: 2" in (out / "metrics.md").read_text()
    # the template-less tokenizer got Covo-Audio's ChatML
    prompt = (out / "prompt.txt").read_text().split("\n", 1)[1]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n\n")
