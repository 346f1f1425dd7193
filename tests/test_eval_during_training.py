"""The recipe's ``eval`` section: held-out sets scored by the official rules while training runs, with curves in
the report and the best checkpoint kept."""

import json

import pytest

from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.recipe import RecipeError, load_recipe
from grpo_audio.train.run import train


def _mmau_file(directory, rows):
    """The rows as an MMAU-format JSON file (audio_id relative to the file, task and difficulty per item)."""
    levels = ["easy", "hard"]
    items = [
        {"id": f"m{i}", "audio_id": r.audio, "question": r.question, "choices": r.choices, "answer": r.answer,
         "task": r.metadata["task"], "difficulty": levels[i % 2], "split": "test-mini"}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    path = directory / "mmau-mini.json"
    path.write_text(json.dumps(items, indent=1))
    return path


@pytest.fixture(scope="module")
def jsonl_and_mmau(tmp_path_factory):
    """JSONL training data and an MMAU-format held-out set over synthetic clips (new clips, another seed)."""
    d = tmp_path_factory.mktemp("evaldata")
    manifest = write_synthetic_set(d / "train", 8, ["pitch", "count"], seed=1)
    heldout = load_manifest(write_synthetic_set(d / "heldout", 6, ["pitch", "count"], seed=2))
    return manifest, _mmau_file(d, heldout)


def _recipe(tmp_path, manifest, mmau, *overrides):
    return load_recipe(
        None,
        [
            f"run.output_dir={tmp_path / 'run'}",
            "data.source=jsonl",
            f"data.path={manifest}",
            "rollout.num_generations=4",
            "rollout.max_completion_length=10",
            "trainer.per_device_train_batch_size=8",
            "trainer.max_steps=4",
            "trainer.save_steps=2",
            "trainer.learning_rate=1e-3",
            f"eval.sets=[{{name: mmau_mini, source: mmau, path: {mmau}}}]",
            "eval.every_steps=2",
            "eval.batch_size=4",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_a_jsonl_run_logs_mmau_curves_and_keeps_the_best_checkpoint(tmp_path, jsonl_and_mmau, capsys):
    manifest, mmau = jsonl_and_mmau
    recipe = _recipe(tmp_path, manifest, mmau, "eval.best_metric=eval/mmau_mini/accuracy", "eval.samples=2")
    run = train(recipe)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [m for m in logged if "eval/mmau_mini/accuracy" in m]
    # before training, at steps 2 and 4 (the end was just evaluated: no second evaluation of step 4)
    assert [m["step"] for m in evaluated] == [0, 2, 4]
    for m in evaluated:
        assert 0.0 <= m["eval/mmau_mini/accuracy"] <= 1.0
        assert {"eval/mmau_mini/task/pitch/accuracy", "eval/mmau_mini/task/count/accuracy"} <= m.keys()
        assert {"eval/mmau_mini/difficulty/easy/accuracy", "eval/mmau_mini/pass_at_k", "time/eval_s"} <= m.keys()
        assert m["eval/mmau_mini/pass_at_k"] >= m["eval/mmau_mini/sampled_accuracy"] - 1e-9
    # the step-2 and step-4 values came out with those steps' training metrics
    assert all("reward" in m for m in evaluated if m["step"] > 0)
    # greedy predictions of each evaluation, one record per item, scored by the MMAU rule
    predictions = (run / "eval_sets" / "mmau_mini" / "step_2.jsonl").read_text().splitlines()
    assert len(predictions) == 6 and {"correct", "prediction", "status"} <= json.loads(predictions[0]).keys()
    status = json.loads((run / "run.json").read_text())
    best = status["eval"]["best"]
    values = {m["step"]: m["eval/mmau_mini/accuracy"] for m in evaluated if m["step"] > 0}
    assert best["value"] == max(values.values()) and best["metric"] == "eval/mmau_mini/accuracy"
    best_step = min(step for step, value in values.items() if value == best["value"])
    assert best["weights"].endswith(f"checkpoint-{best_step}")
    assert (run / "trainer" / f"checkpoint-{best_step}").is_dir()  # rotation kept it
    assert status["eval"]["first"]["step"] == 0 and status["eval"]["last"]["step"] == 4
    # run.json says what was scored and how the sampled answers were drawn (the rollout's settings)
    assert status["eval"]["sets"]["mmau_mini"]["items"] == 6 and status["eval"]["sets"]["mmau_mini"]["rule"] == "mmau"
    assert status["eval"]["sampling"] == {"samples": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    # the report draws the held-out curve
    assert (run / "report" / "held_out_mmau_mini_accuracy.png").is_file()
    out = capsys.readouterr().out
    assert "best eval/mmau_mini/accuracy" in out
    # one line per evaluation, the temperature beside the sampled accuracy
    for m in evaluated:
        assert (
            f"grpo-audio: eval 'mmau_mini' at step {m['step']}: accuracy {m['eval/mmau_mini/accuracy']:.3f} greedy, "
            f"{m['eval/mmau_mini/sampled_accuracy']:.3f} sampled at T=1 (2 per item), "
            f"unparsed {m['eval/mmau_mini/unparsed']:.3f}, n=6\n"
        ) in out


@pytest.mark.slow
def test_the_synthetic_held_out_split_is_one_kind_of_eval_set(tmp_path):
    recipe = load_recipe(
        None,
        [
            f"run.output_dir={tmp_path / 'run'}",
            "data.synthetic.num_questions=8",
            "data.synthetic.heldout_questions=4",
            "rollout.max_completion_length=8",
            "trainer.per_device_train_batch_size=8",
            "trainer.max_steps=1",
            "eval.sets=[{name: tones, source: synthetic}]",
            "eval.before_training=false",
        ],
    )
    run = train(recipe)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "eval/tones/accuracy" in m] == [1]  # only at the end
    assert len((run / "eval_sets" / "tones" / "step_1.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.sets=[{name: a, source: mmau}]"], "eval.sets[0].source is 'mmau' but eval.sets[0].path is not set"),
        (["eval.sets=[{name: a, source: synthetic}]"], "needs data.source 'synthetic' and data.synthetic.heldout"),
        (["eval.sets=[{name: 'a b', source: synthetic}]"], "eval.sets[0].name='a b': use letters"),
        (
            ["data.synthetic.heldout_questions=4",
             "eval.sets=[{name: a, source: synthetic}, {name: a, source: synthetic}]"],
            "eval.sets[1].name='a': two eval sets have this name",
        ),
        (
            ["data.synthetic.heldout_questions=4", "eval.sets=[{name: a, source: synthetic}]",
             "eval.best_metric=eval/b/accuracy"],
            "eval.best_metric='eval/b/accuracy': not a metric the eval sets log",
        ),
        (
            ["data.synthetic.heldout_questions=4", "eval.sets=[{name: a, source: synthetic}]",
             "eval.best_metric=eval/a/accuracy", "eval.every_steps=3", "trainer.save_steps=2"],
            "needs eval.every_steps (now 3) > 0 and a multiple of trainer.save_steps (2)",
        ),
        (["eval.every_steps=-1"], "eval.every_steps=-1"),
        (["eval.sets=[{name: a, source: mmau, path: x.json, max_samples: 0}]"], "sets[0].max_samples=0: must be"),
    ],
)  # fmt: skip
def test_bad_eval_sections_are_refused_naming_the_field(overrides, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(None, overrides)
    assert message in str(caught.value)


def _evaluator(tmp_path, *overrides):
    """A ``HeldOutEvaluator`` over a set of 3 rows and 1 skipped clip (nothing is decoded: its lines and record)."""
    from grpo_audio.data.rows import AudioQuestion
    from grpo_audio.data.sources import SkipRecord, SkipReport
    from grpo_audio.evaluation.during_training import EvalSet, HeldOutEvaluator

    rows = [AudioQuestion(f"q{i}", f"q{i}.wav", "High or low?", ["high", "low"], "high") for i in range(4)]
    skipped = SkipReport(skipped=[SkipRecord("q3", "data.jsonl:4", "q3.wav", "unreadable_audio", "bad", rows[3])])
    sets = [EvalSet("tones", rows[:3], [[1]] * 3, "mmau", "short_cot_v1@v1", skipped)]
    return HeldOutEvaluator(load_recipe(None, list(overrides)), sets, None, None, tmp_path)


def test_each_evaluation_is_one_line_per_set_with_the_sampling_temperature(tmp_path):
    metrics = {"eval/tones/accuracy": 0.625, "eval/tones/sampled_accuracy": 0.48, "eval/tones/unparsed": 0.0}
    evaluator = _evaluator(tmp_path, "eval.samples=8", "rollout.temperature=0.7")
    assert evaluator.describe(0, metrics) == [
        "eval 'tones' at step 0: accuracy 0.625 greedy, 0.480 sampled at T=0.7 (8 per item), unparsed 0.000, n=4"
    ]  # n counts the skipped clip: it is scored as wrong
    assert evaluator.record() == {
        "sets": {"tones": {"items": 4, "rule": "mmau", "template": "short_cot_v1@v1"}},
        "sampling": {"samples": 8, "temperature": 0.7, "top_p": 1.0, "top_k": 0},
    }
    truncated = _evaluator(tmp_path, "eval.samples=2", "rollout.top_p=0.9", "rollout.top_k=20")
    assert "0.480 sampled at T=1, top-p 0.9, top-k 20 (2 per item)" in truncated.describe(3, metrics)[0]
    greedy = _evaluator(tmp_path)
    assert greedy.describe(3, metrics) == ["eval 'tones' at step 3: accuracy 0.625 greedy, unparsed 0.000, n=4"]
    assert greedy.record()["sampling"] is None


def test_a_held_out_split_no_eval_set_scores_is_kept_for_grpo_audio_eval_and_said_so(tmp_path, capsys):
    from grpo_audio.train.run import prepare_heldout_split

    common = ["data.synthetic.tasks=[pitch]", "data.synthetic.heldout_questions=3"]
    rows, _ = prepare_heldout_split(load_recipe(None, common), tmp_path / "a")
    assert len(rows) == 3 and (tmp_path / "a" / "data" / "heldout" / "manifest.jsonl").is_file()
    assert (
        f"grpo-audio: held-out split: 3 questions in {tmp_path / 'a' / 'data' / 'heldout'}, not scored during "
        "training (add eval.sets: [{name: heldout, source: synthetic}] to score it); grpo-audio eval scores it"
    ) in capsys.readouterr().out
    scored = load_recipe(None, [*common, "eval.sets=[{name: tones, source: synthetic}]"])
    assert len(prepare_heldout_split(scored, tmp_path / "b")[0]) == 3
    assert "held-out split" not in capsys.readouterr().out


def test_the_proof_of_learning_reads_the_eval_history(tmp_path):
    import runpy
    from pathlib import Path

    prove = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "prove_learning.py"))
    first = {"eval/tones/accuracy": 0.25, "eval/tones/unparsed": 0.5, "eval/tones/sampled_accuracy": 0.3}
    last = {"eval/tones/accuracy": 0.75, "eval/tones/unparsed": 0.0, "eval/tones/sampled_accuracy": 0.9}
    sampling = {"samples": 8, "temperature": 0.7, "top_p": 1.0, "top_k": 0}
    status = {
        "eval": {
            "sets": {"tones": {"items": 32, "rule": "mmau", "template": "short_cot_v1@v1"}},
            "sampling": sampling,
            "first": {"step": 0, "metrics": first},
            "last": {"step": 80, "metrics": last},
        }
    }
    (tmp_path / "run.json").write_text(json.dumps(status))
    scores = prove["heldout"](tmp_path)
    assert scores == {
        "set": "tones",
        "items": 32,
        "sampling": sampling,
        "before": {"accuracy": 0.25, "sampled_accuracy": 0.3, "unparsed": 0.5},
        "after": {"accuracy": 0.75, "sampled_accuracy": 0.9, "unparsed": 0.0},
    }
    row = {"run": "seed0", "arm": "", "seed": 0, "audio": "audio", **scores, "seconds": 61.0}
    header, _, line = prove["table"]([row]).splitlines()
    assert "| sampled at T=0.7, before | sampled at T=0.7, after |" in header
    assert line == "| plain | 0 | audio | 0.250 | 0.750 | 0.300 | 0.900 | 0.000 | 61 |"
    status["eval"]["first"]["step"] = 2  # no evaluation before training: nothing to compare with
    (tmp_path / "run.json").write_text(json.dumps(status))
    with pytest.raises(RuntimeError, match="eval.before_training and eval.at_end"):
        prove["heldout"](tmp_path)
    status["eval"]["first"]["step"], status["eval"]["sampling"] = 0, None  # greedy only: no sampled accuracy
    (tmp_path / "run.json").write_text(json.dumps(status))
    with pytest.raises(RuntimeError, match="set eval.samples > 0"):
        prove["heldout"](tmp_path)
