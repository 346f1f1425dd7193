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
    # the report draws the held-out curve
    assert (run / "report" / "held_out_mmau_mini_accuracy.png").is_file()
    assert "best eval/mmau_mini/accuracy" in capsys.readouterr().out


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


def test_the_proof_of_learning_reads_an_eval_set_when_there_is_no_synthetic_split(tmp_path):
    import runpy
    from pathlib import Path

    prove = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "prove_learning.py"))
    first = {"eval/mmau_mini/accuracy": 0.25, "eval/mmau_mini/unparsed": 0.5, "eval/mmau_mini/sampled_accuracy": 0.3}
    last = {"eval/mmau_mini/accuracy": 0.75, "eval/mmau_mini/unparsed": 0.0}
    status = {"eval": {"first": {"step": 0, "metrics": first}, "last": {"step": 8, "metrics": last}}}
    (tmp_path / "run.json").write_text(json.dumps(status))
    before, after = prove["heldout"](tmp_path)
    assert before == {"accuracy": 0.25, "format": 0.5, "sampled_accuracy": 0.3}
    assert after == {"accuracy": 0.75, "format": 1.0}
    status["eval"]["first"]["step"] = 2  # no evaluation before training: nothing to compare with
    (tmp_path / "run.json").write_text(json.dumps(status))
    with pytest.raises(RuntimeError, match="eval.before_training and eval.at_end"):
        prove["heldout"](tmp_path)
