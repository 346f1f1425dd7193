"""Bad input never becomes a silently wrong run: recipe values out of range and bad data rows.

Recipes: every numeric field a user sets is checked against its range (``grpo_audio.recipe.ranges``) before anything
is built or written; the one-line message names the field, the value and the allowed range. NaN and inf are refused
where a finite number is needed.

Rows: a training row needs a gold answer unless ``data.allow_unlabeled``; a key that looks like a misspelled answer
on a row without one is a bad row; a manifest with bad rows is refused naming the first few (file:line and reason)
and the count, or with ``data.on_bad_row=skip`` the bad rows are skipped and counted in the same report (and
``skipped.jsonl``) as skipped clips. ``grpo-audio data check`` lists the extra keys with the known key each resembles.
"""

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

import rewards
from grpo_audio.cli import main
from grpo_audio.data.check import main as check_main
from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.rows import AudioQuestion, DataError
from grpo_audio.data.sources import SkipReport, load_rows_for_recipe
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.evaluation.runner import check_eval_rows
from grpo_audio.recipe import RecipeError, load_recipe
from grpo_audio.recipe.loader import grpo_config_fields
from grpo_audio.recipe.ranges import RANGES, field_values
from grpo_audio.recipe.schema import TRAINER_HARNESS_FIELDS

RATE = 16000

# --- recipes -----------------------------------------------------------------------------------------------------

# (overrides, the message: field=value: allowed range)
RECIPE_CASES = [
    (["trainer.learning_rate=-1"], "trainer.learning_rate=-1.0: must be > 0"),
    (["trainer.learning_rate=.nan"], "trainer.learning_rate=nan: must be a finite number > 0"),
    (["trainer.learning_rate=.inf"], "trainer.learning_rate=inf: must be a finite number > 0"),
    (["model.freeze_adapter=false", "model.adapter_learning_rate=0"], "model.adapter_learning_rate=0.0: must be > 0"),
    (["coldstart.learning_rate=-0.001"], "coldstart.learning_rate=-0.001: must be > 0"),
    (["trainer.per_device_train_batch_size=0"], "trainer.per_device_train_batch_size=0: must be at least 1"),
    (["trainer.gradient_accumulation_steps=0"], "trainer.gradient_accumulation_steps=0: must be at least 1"),
    (["coldstart.batch_size=0"], "coldstart.batch_size=0: must be at least 1"),
    (["rollout.max_completion_length=-5"], "rollout.max_completion_length=-5: must be at least 1"),
    (["rollout.num_generations=1"], "rollout.num_generations=1: GRPO needs at least 2"),
    (["rollout.temperature=.nan"], "rollout.temperature=nan: GRPO samples, so it must be > 0"),
    (["trainer.beta=-1"], "trainer.beta=-1.0: must be at least 0"),
    (["trainer.epsilon=0"], "trainer.epsilon=0.0: must be > 0"),
    (["trainer.num_iterations=0"], "trainer.num_iterations=0: must be at least 1"),
    (["trainer.top_entropy_quantile=0"], "trainer.top_entropy_quantile=0.0: must be in (0, 1]"),
    (["trainer.warmup_steps=-0.1"], "trainer.warmup_steps=-0.1: must be at least 0"),
    (["trainer.max_grad_norm=-1"], "trainer.max_grad_norm=-1.0: must be at least 0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be at least 1, or -1"),
    (["trainer.num_train_epochs=0"], "trainer.num_train_epochs=0 with trainer.max_steps=-1"),
    (["trainer.save_steps=0"], "trainer.save_steps=0.0: must be > 0"),
    (["trainer.logging_steps=-1"], "trainer.logging_steps=-1.0: must be > 0"),
    (["trainer.save_total_limit=0"], "trainer.save_total_limit=0: must be at least 1"),
    (["rollout.vllm.gpu_memory_utilization=1.5"], "rollout.vllm.gpu_memory_utilization=1.5: must be in (0, 1]"),
    (["rollout.vllm.max_model_len=0"], "rollout.vllm.max_model_len=0: must be at least 1"),
    (["rollout.vllm.server_timeout_s=0"], "rollout.vllm.server_timeout_s=0.0: must be > 0"),
    (["model.lora={r: 0}"], "model.lora.r=0: must be at least 1"),
    (["model.lora={alpha: 0}"], "model.lora.alpha=0: must be > 0"),
    (["model.lora={dropout: 1.0}"], "model.lora.dropout=1.0: must be in [0, 1)"),
    (["model.tiny.hidden_size=0"], "model.tiny.hidden_size=0: must be at least 1"),
    (["model.tiny.num_heads=3"], "model.tiny.hidden_size=64: must be a multiple of model.tiny.num_heads=3"),
    (["data.max_samples=0"], "data.max_samples=0: must be at least 1 (null = all rows)"),
    (["data.min_duration_s=.nan"], "data.min_duration_s=nan: must be a finite number at least 0.01"),
    (["data.max_duration_s=-1"], "data.max_duration_s=-1.0: must be > 0"),
    (["data.synthetic.num_questions=0"], "data.synthetic.num_questions=0: must be at least 1"),
    (["data.synthetic.tasks=[]"], "data.synthetic.tasks=[]: must name at least one task"),
    (["rewards.terms=[{name: accuracy, weight: .nan}]"], "rewards.terms[0].weight=nan: must be a finite number"),
    (["rewards.terms=[{name: consistency, options: {model: m, timeout_s: 0}}]"], "option 'timeout_s' must be >="),
    (["rewards.max_unscored_fraction=.nan"], "rewards.max_unscored_fraction=nan: must be between 0 and 1"),
    (["run.seed=-1"], "run.seed=-1: must be at least 0"),
]


@pytest.mark.parametrize(("overrides", "message"), RECIPE_CASES, ids=[" ".join(c[0]) for c in RECIPE_CASES])
def test_a_value_out_of_range_names_field_value_and_range(overrides, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(None, overrides)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_a_recipe_file_with_yaml_nan_is_refused_naming_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  learning_rate: .nan\n")
    with pytest.raises(RecipeError, match=r"r.yaml: trainer.learning_rate=nan: must be a finite number > 0"):
        load_recipe(recipe)


def test_cli_train_refuses_a_negative_learning_rate_before_writing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert main(["train", "--set", "trainer.learning_rate=-1", "--set", f"run.output_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "trainer.learning_rate=-1.0: must be > 0" in err
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []


def test_the_range_table_names_real_fields_and_the_defaults_are_in_range():
    trl_fields = grpo_config_fields()
    recipe = load_recipe(None, ["model.lora={r: 8}"])  # every section present, so a misspelled path raises
    from trl.trainer.grpo_config import GRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.init}
    for path, allowed, _ in RANGES:
        if path.startswith("trainer.") and path.removeprefix("trainer.") in TRAINER_HARNESS_FIELDS:
            continue  # the harness's own trainer fields default to null (off)
        if path.startswith("trainer."):
            name = path.removeprefix("trainer.")
            assert name in trl_fields, path
            default = defaults[name]
            assert default is None or allowed.contains(default), (path, default)
        else:
            for where, value in field_values(recipe, path):  # AttributeError on a path the schema lacks
                assert allowed.contains(value), (where, value)


# --- rows --------------------------------------------------------------------------------------------------------

GOOD = {"question": "Which?", "choices": ["a", "b"], "answer": "a"}


def _data(tmp_path, rows: list, name="data.jsonl"):
    """A JSONL manifest: one good row, then ``rows`` (dicts completed with GOOD's fields, or raw lines)."""
    sf.write(str(tmp_path / "good.wav"), 0.3 * np.ones(RATE // 2, dtype=np.float32), RATE)
    lines = [json.dumps({"id": "good", "audio": "good.wav", **GOOD})]
    for i, row in enumerate(rows):
        if isinstance(row, str):
            lines.append(row)
            continue
        full = {"id": f"r{i}", "audio": "good.wav", **GOOD, **row}
        lines.append(json.dumps({k: v for k, v in full.items() if v is not ...}))
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe(manifest, *overrides):
    return load_recipe(None, ["data.source=jsonl", f"data.path={manifest}", *overrides])


NO_ANSWER = {"answer": ...}  # ... = the key is absent

# (rows after the good one, overrides, the error message: file:line, row and reason)
ROW_ERROR_CASES = [
    ("missing answer", [NO_ANSWER], [], r"data.jsonl:2: row 'r0': no gold answer \(data.on_bad_row=skip leaves bad "
     r"rows out; data.allow_unlabeled=true trains on rows without an answer"),
    ("null answer", [{"answer": None}], [], r"data.jsonl:2: row 'r0': no gold answer"),
    ("misspelled answer", [{**NO_ANSWER, "answr": "a"}], [],
     r"data.jsonl:2: row 'r0': unknown key 'answr' \(did you mean 'answer'\?\) and no gold answer"),
    ("capitalised answer", [{**NO_ANSWER, "Answer": "a"}], [], r"unknown key 'Answer' \(did you mean 'answer'\?\)"),
    ("misspelled answer with unlabeled rows allowed", [{**NO_ANSWER, "answr": "a"}], ["data.allow_unlabeled=true"],
     r"data.jsonl:2: row 'r0': unknown key 'answr'"),
    ("mmsu key in a jsonl manifest", [{**NO_ANSWER, "answer_gt": "a"}], [], r"unknown key 'answer_gt'"),
    ("several bad rows", [NO_ANSWER, {"answer": "z"}, "{oops", NO_ANSWER, {"id": "good"}], [],
     r"data.jsonl: 5 bad rows: .*data.jsonl:2: row 'r0': no gold answer.*; .*data.jsonl:3: row 'r1': answer 'z' is "
     r"not one of the choices.*; .*data.jsonl:4: not valid JSON.*; and 2 more \(data.on_bad_row=skip"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "rows", "overrides", "message"), ROW_ERROR_CASES, ids=[c for c, *_ in ROW_ERROR_CASES]
)
def test_a_bad_row_is_an_error_naming_file_line_and_reason(tmp_path, what, rows, overrides, message):
    manifest = _data(tmp_path, rows)
    with pytest.raises(DataError, match=message) as info:
        load_rows_for_recipe(_recipe(manifest, *overrides), tmp_path / "run")
    assert "\n" not in str(info.value)


def test_unlabeled_rows_load_when_allowed_and_accuracy_does_not_apply(tmp_path):
    manifest = _data(tmp_path, [NO_ANSWER])
    rows, report = load_rows_for_recipe(_recipe(manifest, "data.allow_unlabeled=true"), tmp_path / "run")
    assert [r.answer for r in rows] == ["a", None] and not report.skipped
    sample = {"id": rows[1].id, "choices": rows[1].choices, "answer": rows[1].answer}
    assert rewards.get_reward("accuracy").fn("<answer>a</answer>", sample) is None  # not applicable, never 0


def test_skip_policy_counts_bad_rows_with_skipped_clips_in_one_report(tmp_path):
    manifest = _data(tmp_path, [NO_ANSWER, {**NO_ANSWER, "answr": "a"}, "{oops", {"audio": "gone.wav"}])
    recipe = _recipe(manifest, "data.on_bad_row=skip", "data.on_bad_audio=skip")
    rows, report = load_rows_for_recipe(recipe, tmp_path / "run")
    assert [r.id for r in rows] == ["good"]
    assert report.counts == {"bad_json": 1, "missing_answer": 1, "misspelled_key": 1, "missing_file": 1}
    assert report.examined == 5 and report.kept == 1
    assert "data: 1 of 5 rows kept; skipped 4 (bad_json 1, missing_answer 1, misspelled_key 1, missing_file 1)" in (
        report.summary()
    )
    logged = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["where"].rsplit(":", 1)[1], r["reason"]) for r in logged] == [
        ("2", "missing_answer"), ("3", "misspelled_key"), ("4", "bad_json"), ("5", "missing_file")
    ]  # fmt: skip
    assert logged[0]["id"] == "r0" and logged[0]["message"].startswith("no gold answer")
    assert logged[2]["id"] == "" and logged[2]["message"].startswith("not valid JSON")


def test_a_lookalike_key_on_a_labelled_row_is_a_warning_not_an_error(tmp_path, caplog):
    manifest = _data(tmp_path, [{"categroy": "music", "speaker": "x"}])
    rows, _ = load_rows_for_recipe(_recipe(manifest), tmp_path / "run")
    assert rows[1].metadata == {"categroy": "music", "speaker": "x"}
    assert "key 'categroy' in 1 row(s) is not a field the harness reads (did you mean 'category'?)" in caplog.text
    assert "'speaker'" not in caplog.text  # metadata for one's own rewards, nothing resembles it


def test_load_manifest_and_the_held_out_split_follow_the_same_rules(tmp_path):
    synthetic = write_synthetic_set(tmp_path / "heldout", 4, ["pitch"], seed=0)
    lines = synthetic.read_text().splitlines()
    broken = [json.loads(x) for x in lines]
    for row in broken[1:]:
        row["answr"] = row.pop("answer")
    synthetic.write_text("".join(json.dumps(r) + "\n" for r in broken))
    with pytest.raises(DataError, match=r"manifest.jsonl: 3 bad rows: .*manifest.jsonl:2: row 'pitch-0001': unknown "
                                        r"key 'answr' \(did you mean 'answer'\?\)"):  # fmt: skip
        load_manifest(synthetic)
    unlabeled = AudioQuestion("q", "q.wav", "Is the tone high or low?", ["high", "low"], None)
    with pytest.raises(DataError, match=r"evaluation needs a gold answer on every row; 1 have none"):
        check_eval_rows([unlabeled], SkipReport())  # every eval set, the synthetic split included


def test_evaluation_refuses_rows_it_could_not_read_even_with_the_skip_policy(tmp_path):
    from grpo_audio.data.prompting import load_template
    from grpo_audio.evaluation.runner import EvalSettings, evaluate

    manifest = _data(tmp_path, ["{oops"])
    recipe = _recipe(manifest, "data.on_bad_row=skip")
    with pytest.raises(DataError, match=r"evaluation scores every row; 1 could not be read .*data.jsonl:2: not valid"):
        evaluate(recipe, load_template("audio_cot_v1"), EvalSettings(), tmp_path / "eval", echo=lambda *_: None)


# --- data check --------------------------------------------------------------------------------------------------


def test_data_check_lists_extra_keys_with_the_known_key_each_resembles(tmp_path, capsys):
    manifest = _data(tmp_path, [{**NO_ANSWER, "answr": "a"}, {"categroy": "music", "speaker": "x"}, NO_ANSWER])
    assert check_main([str(manifest)]) == 1
    out = capsys.readouterr().out
    assert ("extra keys (kept as row metadata, read by no harness code): 'answr' 1 row (did you mean 'answer'?), "
            "'categroy' 1 row (did you mean 'category'?), 'speaker' 1 row") in out  # fmt: skip
    assert f"[misspelled_key] {manifest}:2: row 'r0': unknown key 'answr'" in out
    assert f"[missing_answer] {manifest}:4: row 'r2': no gold answer" in out
    assert "-> an error in training" in out and "result: 2 problem(s) found" in out
    assert "policy: bad rows: error; unlabeled rows: refused;" in out


def test_data_check_is_clean_with_a_lookalike_key_but_says_so(tmp_path, capsys):
    manifest = _data(tmp_path, [{"categroy": "music"}])
    assert check_main([str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "result: clean, 2 rows ready (but see the extra keys that resemble known ones: categroy)" in out


def test_data_check_follows_the_recipes_row_policy(tmp_path, capsys):
    manifest = _data(tmp_path, [NO_ANSWER, "{oops"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  source: jsonl\n  path: {manifest}\n  allow_unlabeled: true\n  on_bad_row: skip\n")
    assert check_main([str(recipe)]) == 1
    out = capsys.readouterr().out
    assert "answers: 1 with a gold answer, 1 without (data.allow_unlabeled" in out
    assert f"[bad_json] {manifest}:3: not valid JSON" in out and "-> skipped (data.on_bad_row=skip)" in out
    assert "rows: 3 read, 2 usable, 1 with problems" in out


def test_a_benchmarks_own_fields_are_known_not_lookalikes(tmp_path, capsys):
    sf.write(str(tmp_path / "good.wav"), 0.3 * np.ones(RATE // 2, dtype=np.float32), RATE)
    row = {"id": "m1", "audio_path": "good.wav", "question": "Which?", "choice_a": "a", "choice_b": "b",
           "answer_gt": "a", "task_name": "t", "category": "c", "sub-category": "s", "sub-sub-category": "ss",
           "linguistics_sub_discipline": "l"}  # fmt: skip
    (tmp_path / "mmsu.jsonl").write_text(json.dumps(row) + "\n")
    assert check_main([str(tmp_path / "mmsu.jsonl"), "--format", "mmsu"]) == 0
    out = capsys.readouterr().out
    assert "extra keys" not in out and "result: clean, 1 rows ready\n" in out
