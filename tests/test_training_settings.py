"""The training settings a model directory carries (``grpo_audio_training.json``): written with final_model/ and
initial_model/ as part of their atomic save, read back with every field checked, and used by ``grpo-audio eval``
for a model moved out of its run directory (flags and an explicit recipe still win)."""

import dataclasses
import json
import shutil

import pytest

from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.evaluation.cli import main
from grpo_audio.model.training_settings import (
    SETTINGS_NAME,
    TrainingSettingsError,
    read_training_settings,
    settings_files,
    settings_of_recipe,
)
from grpo_audio.recipe import load_recipe

CUSTOM_TEMPLATE = """name: custom_v1
version: 3
system: "Listen."
user: |-
  {question}
  {choices}
  Answer with the option.
choice_line: "{letter}. {text}"
"""


def tiny_model_and_tokenizer(recipe):
    from grpo_audio.data.manifest import load_manifest
    from grpo_audio.data.prompting import load_template
    from grpo_audio.data.vocabulary import vocabulary_texts
    from grpo_audio.model.build import build_tokenizer_and_model

    rows = load_manifest(recipe.data.path) if recipe.data.path else []
    texts = vocabulary_texts(rows, load_template(recipe.prompt.template))
    return build_tokenizer_and_model(recipe.model, recipe.run.seed, texts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny final_model/ saved by a run trained with a template that is not installed (a file deleted since) and
    a completion length of 5, moved out of its run directory; and a JSONL held-out set."""
    from grpo_audio.train.run import save_final_model

    d = tmp_path_factory.mktemp("settings")
    manifest = write_synthetic_set(d / "heldout", 4, ["pitch", "count"], seed=1)
    template = d / "custom_v1.yaml"
    template.write_text(CUSTOM_TEMPLATE)
    recipe = load_recipe(
        None, [f"prompt.template={template}", "rollout.max_completion_length=5", f"run.output_dir={d / 'run'}"]
    )
    tokenizer, model = tiny_model_and_tokenizer(recipe)
    save_final_model(model, tokenizer, d / "run" / "final_model", "covo", settings_files(recipe))
    assert not list((d / "run").glob("final_model.tmp*"))
    (d / "elsewhere").mkdir()
    shutil.move(d / "run" / "final_model", d / "elsewhere" / "model")
    template.unlink()  # the model directory's copy is all that is left of it
    return d, d / "elsewhere" / "model", manifest


def test_settings_round_trip_and_record_what_the_recipe_trains_with(tmp_path):
    recipe = load_recipe(None, ["prompt.template=short_cot_v1", "rollout.top_k=7", "data.resampler=soxr"])
    (tmp_path / SETTINGS_NAME).write_text(settings_files(recipe)[SETTINGS_NAME])
    read = read_training_settings(tmp_path)
    assert read.template_ident == "short_cot_v1@v1" and read.top_k == 7 and read.resampler == "soxr"
    assert read.path == str(tmp_path / SETTINGS_NAME)
    assert read.template_content.startswith("# A short chain-of-thought prompt")
    assert dataclasses.replace(read, path=None) == settings_of_recipe(recipe)
    assert read_training_settings(tmp_path / "nothing here") is None


def test_a_moved_model_is_evaluated_with_its_training_template_and_length(trained, capsys):
    d, model, manifest = trained
    out = d / "eval_default"
    argv = ["--model", str(model), "--benchmark", str(manifest), "--out", str(out), "--batch-size", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("eval: template"))
    assert line.startswith("eval: template custom_v1@v3, max_new_tokens 5, ")
    assert f"from {model / SETTINGS_NAME}; temperature 0 (greedy) from the default" in line
    assert "using the recipe the model was trained with" not in printed  # no run directory around it
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["template"] == "custom_v1@v3" and metrics["decoding"]["max_new_tokens"] == 5
    assert (out / "prompt.txt").read_text().startswith("# template custom_v1@v3")
    assert "Answer with the option." in (out / "prompt.txt").read_text()


def test_flags_and_an_explicit_recipe_beat_the_model_directory(trained, tmp_path, capsys):
    d, model, manifest = trained
    base = ["--model", str(model), "--benchmark", str(manifest), "--batch-size", "4", "--max-samples", "2"]
    assert main([*base, "--out", str(tmp_path / "a"), "--template", "short_cot_v1", "--max-new-tokens", "3"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("eval: template"))
    assert line.startswith("eval: template short_cot_v1@v1 from --template; max_new_tokens 3 from --max-new-tokens;")
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["template"] == "short_cot_v1@v1"

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("prompt:\n  template: audio_nothink_v1\nrollout:\n  max_completion_length: 4\n")
    assert main([str(recipe), *base, "--out", str(tmp_path / "b"), "--set", "data.resampler=soxr"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("eval: template"))
    assert line.startswith("eval: template audio_nothink_v1@v1, max_new_tokens 4, text_only true and ")
    assert f"from recipe {recipe};" in line and line.endswith("; resampler soxr from --set")
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["template"] == "audio_nothink_v1@v1" and metrics["decoding"]["max_new_tokens"] == 4


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["decoding"].update(top_k=-1), "field 'decoding.top_k': expected >= 0, got -1"),
        (lambda s: s["decoding"].update(text_only="yes"), "field 'decoding.text_only': expected bool, got 'yes'"),
        (lambda s: s["audio"].update(resampler="fast"), "field 'audio.resampler': expected one of sinc, soxr"),
        (lambda s: s["decoding"].pop("max_completion_length"), "field 'decoding.max_completion_length': missing"),
        (lambda s: s["prompt_template"].update(content="name: x\n"), "does not match prompt_template.sha256"),
        (lambda s: s.update(format="other/9"), "field 'format': expected 'grpo_audio_training/1'"),
    ],
)
def test_a_bad_settings_file_is_one_error_naming_the_file_and_field(trained, tmp_path, capsys, edit, message):
    _, model, manifest = trained
    broken = tmp_path / "model"
    shutil.copytree(model, broken)
    data = json.loads((broken / SETTINGS_NAME).read_text())
    edit(data)
    (broken / SETTINGS_NAME).write_text(json.dumps(data))
    with pytest.raises(TrainingSettingsError, match="decoding|audio|prompt_template|format"):
        read_training_settings(broken)
    assert main(["--model", str(broken), "--benchmark", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken / SETTINGS_NAME}: ") and message in err and err.count("\n") == 1


def test_a_settings_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / SETTINGS_NAME).write_text("{not json")
    with pytest.raises(TrainingSettingsError, match=f"{SETTINGS_NAME}: not a readable JSON file"):
        read_training_settings(tmp_path)


@pytest.mark.parametrize("source", ["tiny", "pretrained"])
def test_the_starting_point_is_kept_with_its_settings(source, tmp_path, monkeypatch):
    """A tiny run always keeps initial_model/; a pretrained run does after a cold start (a full copy, released
    layout), and not without one (model.path is its starting point)."""
    from grpo_audio.model.checkpoint_load import check_covo_checkpoint
    from grpo_audio.train import run as training
    from grpo_audio.train.run_dir import save_model_atomic

    monkeypatch.setattr(training, "run_coldstart", lambda *args, **kwargs: [])  # its training is tested elsewhere
    base = load_recipe(None, [f"run.output_dir={tmp_path / 'unused'}"])
    tokenizer, model = tiny_model_and_tokenizer(base)
    save_model_atomic(model, tokenizer, tmp_path / "pretrained")
    pretrained = ["model.source=pretrained", f"model.path={tmp_path / 'pretrained'}"] if source == "pretrained" else []
    common = [*pretrained, "rollout.max_completion_length=9", f"run.output_dir={tmp_path / 'run'}"]
    recipe = load_recipe(None, [*common, "coldstart.steps=1", "coldstart.allow_pretrained=true"])
    run = tmp_path / "run"
    run.mkdir()
    training.make_starting_point(recipe, run, model, tokenizer, [], None)
    initial = run / "initial_model"
    assert read_training_settings(initial).max_completion_length == 9
    assert not list(run.glob("initial_model.tmp*"))
    if source == "pretrained":
        check_covo_checkpoint(initial)  # loadable as a pretrained source: evaluable, or a new run's start
        shutil.rmtree(initial)
        training.make_starting_point(load_recipe(None, common), run, model, tokenizer, [], None)
        assert not initial.exists()


# --- a relative path that does not exist names the absolute path tried and what it was relative to --------------


def test_a_relative_missing_path_names_the_absolute_path_tried(trained, tmp_path, monkeypatch, capsys):
    _, model, _ = trained
    here = tmp_path.resolve()
    monkeypatch.chdir(here)
    cases = [  # (arguments, the relative path, the message before the path tried)
        (["--model", "runs/x/final_model"], "runs/x/final_model", "model.path: directory not found: "),
        (["--model", str(model), "--benchmark", "held/out.jsonl"], "held/out.jsonl", ""),
        (["recipe.yaml", "--model", str(model)], "recipe.yaml", "recipe file not found: "),
    ]
    for argv, relative, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{message}{relative}" in err, err
        assert f"(tried {here / relative}, relative to the current directory {here})" in err, err

    # a row's relative clip: read against the data file's directory, or data.root (--root) when given
    row = {"id": "a", "audio": "clips/a.wav", "question": "Which?", "choices": ["x", "y"], "answer": "x"}
    (here / "sets").mkdir()
    (here / "sets" / "b.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["--model", str(model), "--benchmark", "sets/b.jsonl"]) == 2
    err = capsys.readouterr().err
    assert f"'{here / 'sets' / 'clips' / 'a.wav'}': file does not exist" in err
    assert f"relative audio paths are read from the data file's directory {here / 'sets'}" in err
    (here / "audio").mkdir()
    assert main(["--model", str(model), "--benchmark", "sets/b.jsonl", "--root", "audio"]) == 2
    assert f"relative audio paths are read from data.root {here / 'audio'}" in capsys.readouterr().err
