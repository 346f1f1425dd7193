"""``grpo-audio eval``: the official scoring rules, the metrics, and a run on a tiny model with benchmark files
written here (MMAU and MMSU formats), plus ``eval compare``."""

import hashlib
import json

import pytest
import yaml

from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.evaluation.cli import main
from grpo_audio.evaluation.metrics import compute_metrics
from grpo_audio.evaluation.scoring import score_mmau, score_mmsu
from rewards.matching import mmau_match

GENDER = ["Man", "Woman"]


# --- MMAU / MMAR: the documented cases of the official string_match, on the extracted answer span ----------------


@pytest.mark.parametrize(
    "prediction, correct",
    [
        ("Man", True),
        ("(A) Man", True),
        ("The answer is Man", True),
        ("<answer>Man</answer>", True),
        ("man.", True),
        ("A", False),  # a bare letter carries no choice words
        ("It is a man, not a woman", False),  # names a wrong choice's token
        ("Woman", False),
        ("", False),  # an empty prediction is wrong
    ],
)
def test_mmau_rule_documented_cases(prediction, correct):
    assert mmau_match(prediction, "Man", GENDER) is correct
    assert score_mmau(prediction, "Man", GENDER).correct is correct


@pytest.mark.parametrize(
    "completion, status, choice",
    [
        ("<think>a deep voice, so not a woman</think><answer>Man</answer>", "correct", 0),
        ("<think>high pitch</think><answer>(B) Woman</answer>", "wrong", 1),
        ("<think>hmm</think><answer>A</answer>", "unparsed", None),
        ("<think>hmm</think><answer>Man or Woman</answer>", "unparsed", None),
        ("<think>truncated reasoning that never", "unparsed", None),  # whole output scored: no single choice
        ("", "missing", None),
        ("<answer> </answer>", "missing", None),
    ],
)
def test_mmau_scoring_extracts_the_answer_span_and_classifies(completion, status, choice):
    scored = score_mmau(completion, "Man", GENDER)
    assert (scored.status, scored.choice, scored.correct) == (status, choice, status == "correct")


def test_mmau_reasoning_left_in_the_prediction_is_wrong_but_the_span_is_right():
    completion = "<think>It could be a woman but the voice is deep</think><answer>Man</answer>"
    assert not mmau_match(completion, "Man", GENDER)  # raw output names "woman"
    assert score_mmau(completion, "Man", GENDER).correct


# --- MMSU: first character, else second-to-last character, on the raw output ----------------------------------

CHOICES = ["happy", "sad", "angry", "neutral"]


@pytest.mark.parametrize(
    "output, status, choice",
    [
        ("B", "correct", 1),
        ("B. sad", "correct", 1),
        ("\nB", "correct", 1),  # newlines are removed first
        ("(B)", "correct", 1),  # second-to-last character
        ("The answer is B.", "correct", 1),
        ("Answer: B", "wrong", 0),  # the official rule reads the first character, 'A'
        ("C", "wrong", 2),
        ("b", "unparsed", None),  # lower case is not an option letter
        ("sad", "unparsed", None),  # the text alone does not count
        ("E", "unparsed", None),  # outside A-D
        ("", "missing", None),
    ],
)
def test_mmsu_letter_rule(output, status, choice):
    scored = score_mmsu(output, "sad", CHOICES)
    assert (scored.status, scored.choice, scored.correct) == (status, choice, status == "correct")


def test_metrics_count_missing_and_unparsed_as_wrong_and_give_pass_at_k():
    def rec(i, correct, status, task):
        return {"id": i, "correct": correct, "status": status, "metadata": {"task": task}}

    records = [
        rec("1", True, "correct", "sound"), rec("1", False, "wrong", "sound"),
        rec("2", False, "unparsed", "music"), rec("2", False, "wrong", "music"),
        rec("3", False, "missing", "music"), rec("3", False, "missing", "music"),
    ]  # fmt: skip
    metrics = compute_metrics(records, k=2)
    overall = metrics["overall"]
    assert overall["items"] == 3 and overall["samples"] == 6
    assert overall["accuracy"] == pytest.approx(1 / 6) and overall["pass_at_k"] == pytest.approx(1 / 3)
    assert (overall["unparsed"], overall["missing"]) == (1, 2)
    assert metrics["groups"]["task"]["sound"]["accuracy"] == 0.5
    assert metrics["groups"]["task"]["music"]["items"] == 2


# --- end to end on a tiny model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A tiny saved model and MMAU- and MMSU-format files over synthetic clips (one MMAU clip is corrupt)."""
    from helpers.tiny_model import harness_tokenizer_and_model

    from grpo_audio.data.manifest import load_manifest
    from grpo_audio.train.run_dir import save_model_atomic

    d = tmp_path_factory.mktemp("eval")
    rows = load_manifest(write_synthetic_set(d / "audio", 6, ["pitch", "count", "longer"], seed=0))
    tokenizer, model = harness_tokenizer_and_model(rows)
    save_model_atomic(model, tokenizer, d / "model")

    (d / "audio" / "broken.wav").write_bytes(b"RIFF....WAVE")
    tasks, levels = ["sound", "music", "speech"], ["easy", "medium", "hard"]
    mmau = [
        {"id": r.id, "audio_id": f"audio/{r.audio.rsplit('/', 1)[1]}", "question": r.question, "choices": r.choices,
         "answer": r.answer, "dataset": "synthetic", "task": tasks[i % 3], "split": "test-mini",
         "category": "tones", "sub-category": r.metadata["task"], "difficulty": levels[i % 3]}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    mmau.append({**mmau[0], "id": "broken", "audio_id": "audio/broken.wav"})
    (d / "mmau.json").write_text(json.dumps(mmau, indent=1))
    mmsu = [
        {"id": f"s{i}", "audio_path": f"audio/{r.audio.rsplit('/', 1)[1]}", "question": r.question,
         "choice_a": "high", "choice_b": "low", "choice_c": "one", "choice_d": "two", "answer_gt": "low",
         "task_name": r.metadata["task"], "category": "perception", "sub-category": "pitch"}
        for i, r in enumerate(rows[:3])
    ]  # fmt: skip
    (d / "mmsu.jsonl").write_text("".join(json.dumps(x) + "\n" for x in mmsu))
    return d


def test_eval_on_an_mmau_file_prints_the_per_category_table_and_writes_files(bench, capsys):
    out = bench / "out_mmau"
    base = ["--model", str(bench / "model"), "--benchmark", str(bench / "mmau.json"), "--out", str(out),
            "--max-new-tokens", "8", "--batch-size", "4"]  # fmt: skip
    assert main(base) == 2  # the corrupt clip is an error naming the row and file by default
    err = capsys.readouterr().err
    assert "mmau.json[6]: row 'broken'" in err and "broken.wav" in err

    assert main([*base, "--set", "data.on_bad_audio=skip"]) == 0
    printed = capsys.readouterr().out
    assert "| **overall** | all | 7 |" in printed
    for line in ("| task | music | 2 |", "| task | sound | 3 |", "| sub-category | count | 2 |",
                 "| difficulty | easy | 3 |", "| category | tones | 7 |"):  # fmt: skip
        assert line in printed, line
    assert {"predictions.jsonl", "metrics.json", "metrics.md", "prompt.txt", "skipped.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"]["sha256"] == hashlib.sha256((bench / "mmau.json").read_bytes()).hexdigest()
    assert metrics["benchmark"]["format"] == "mmau" and metrics["rule"] == "mmau"
    assert metrics["decoding"]["greedy"] and metrics["decoding"]["max_new_tokens"] == 8
    assert metrics["template"] == "audio_cot_v1@v1"
    overall = metrics["overall"]
    assert overall["items"] == 7 and overall["missing"] >= 1  # the skipped clip counts, as wrong
    assert metrics["skipped"] == {"count": 1, "reasons": {"unreadable": 1}, "truncated": 0}
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 7
    assert {p["status"] for p in predictions} <= {"correct", "wrong", "unparsed", "missing"}
    broken = next(p for p in predictions if p["id"] == "broken")
    assert broken["status"] == "missing" and broken["skip_reason"] == "unreadable" and not broken["correct"]
    assert sum(p["correct"] for p in predictions) == overall["correct"]
    assert (out / "metrics.md").read_text() in printed
    assert "<|cAUDIO|>" in (out / "prompt.txt").read_text()


def test_eval_mmsu_uses_the_official_prompt_and_samples_pass_at_k(bench, capsys):
    out = bench / "out_mmsu"
    argv = ["--model", str(bench / "model"), "--benchmark", str(bench / "mmsu.jsonl"), "--out", str(out),
            "--max-new-tokens", "4", "--samples", "2", "--temperature", "1.0"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pass@2 (%)" in printed and "| task_name | pitch |" in printed
    prompt = (out / "prompt.txt").read_text()
    assert prompt.startswith("# template mmsu_v1@v1")
    assert "You must respond with only A, B, C, or D.\n\nQuestion: " in prompt and "\nD. two" in prompt
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rule"] == "mmsu" and metrics["k"] == 2 and metrics["overall"]["samples"] == 6
    assert not metrics["decoding"]["greedy"]
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted((p["id"], p["sample"]) for p in lines) == [(f"s{i}", j) for i in range(3) for j in range(2)]

    assert main(["compare", str(bench / "out_mmau"), str(out)]) == 0
    table = capsys.readouterr().out
    assert "different benchmark files" in table
    assert "| **overall** | all |" in table and "delta (points)" in table
    assert "| task | music |" in table and "| task_name | pitch | - |" in table


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--samples", "3"], "--samples > 1 needs --temperature > 0"),
        (["--benchmark", "/nonexistent/b.json"], "b.json: file not found"),
        (["--root", "/tmp"], "--format and --root describe --benchmark"),
    ],
)
def test_eval_refuses_bad_arguments_in_one_line(bench, capsys, extra, message):
    assert main(["--model", str(bench / "model"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_eval_compare_needs_metrics(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_eval_defaults_follow_the_run_and_never_overwrite_another_decoding(bench, tmp_path, capsys, monkeypatch):
    """A model inside a run directory is evaluated with the recipe it was trained with (its template); greedy,
    sampled and silence-ablated evaluations go to folders of their own; the ablation is applied and recorded."""
    import shutil

    from grpo_audio.recipe import load_recipe, recipe_to_dict

    run = tmp_path / "run"
    shutil.copytree(bench / "model", run / "final_model")
    trained = load_recipe(None, ["prompt.template=short_cot_v1", "rollout.max_completion_length=6",
                                 "coldstart.steps=3", "trainer.beta=0.04"])  # fmt: skip
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(trained)))
    (run / "run.json").write_text("{}")
    base = ["--model", str(run / "final_model"), "--benchmark", str(bench / "mmau.json"), "--batch-size", "4",
            "--max-samples", "3"]  # fmt: skip
    assert main(base) == 0
    assert "using the recipe the model was trained with" in capsys.readouterr().out
    greedy = run / "eval" / "final_model-mmau-greedy"
    metrics = json.loads((greedy / "metrics.json").read_text())
    assert metrics["template"].startswith("short_cot_v1") and metrics["decoding"]["max_new_tokens"] == 6
    assert metrics["audio_ablation"] == "none"
    assert main([*base, "--samples", "2", "--temperature", "0.7"]) == 0
    from grpo_audio.evaluation import runner

    built = []
    featurizer = runner.AudioFeaturizer
    monkeypatch.setattr(runner, "AudioFeaturizer", lambda **kw: built.append(kw) or featurizer(**kw))
    assert main([*base, "--set", "model.audio_ablation=silence"]) == 0
    assert [kw["ablation"] for kw in built] == ["silence"]  # the clips really are replaced by silence
    silent = run / "eval" / "final_model-mmau-greedy-silence"
    assert (run / "eval" / "final_model-mmau-T0.7-k2" / "metrics.json").is_file() and silent.is_dir()
    assert json.loads((silent / "metrics.json").read_text())["audio_ablation"] == "silence"
    assert json.loads((greedy / "metrics.json").read_text())["decoding"]["greedy"]  # not overwritten


def test_compare_and_the_metrics_page_say_how_each_run_decoded_and_define_their_counts():
    from grpo_audio.evaluation.metrics import compare_table, markdown_table

    def metrics(greedy: bool, ablation: str) -> dict:
        overall = {"items": 2, "accuracy": 0.5, "correct": 1, "unparsed": 1, "missing": 0}
        return {
            "model": "m", "template": "t@v1", "rule": "mmau", "k": 1, "audio_ablation": ablation, "groups": {},
            "benchmark": {"path": "b.json", "sha256": "0" * 64, "format": "mmau"},
            "decoding": {"greedy": greedy, "samples": 1 if greedy else 8, "temperature": 0.0 if greedy else 0.7,
                         "max_new_tokens": 8},
            "skipped": {"count": 0}, "overall": overall,
        }  # fmt: skip

    table = compare_table(metrics(True, "none"), metrics(True, "silence"), "greedy", "silence")
    assert "greedy, audio as recorded" in table.splitlines()[0] and "greedy, audio: silence" in table.splitlines()[1]
    assert "8 samples at temperature 0.7" in compare_table(metrics(False, "none"), metrics(True, "none"))
    page = markdown_table(metrics(True, "none"))
    assert "unparsed: the rule found no answer in the completion; missing: the item has no completion" in page
