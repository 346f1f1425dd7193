"""Recipes: shipped files parse, typos get suggestions, bad values name the field, the CLI prints one line."""

from pathlib import Path

import pytest

from grpo_audio.cli import main
from grpo_audio.recipe import RecipeError, load_recipe
from grpo_audio.recipe.loader import generation_batch_size
from grpo_audio.resources import shipped_dir

ROOT = Path(__file__).resolve().parents[1]

SHIPPED = sorted(shipped_dir("configs").glob("*.yaml"))


def test_there_are_shipped_recipes():
    assert any(p.name == "demo.yaml" for p in SHIPPED)


def _local_paths(path, tmp_path) -> list[str]:
    """GPU recipes name a downloaded checkpoint and dataset: stand-ins let them parse here."""
    import yaml

    data = yaml.safe_load(path.read_text())
    overrides = []
    if data.get("model", {}).get("path"):
        (tmp_path / "checkpoint").mkdir()
        overrides.append(f"model.path={tmp_path / 'checkpoint'}")
    if data.get("data", {}).get("path"):
        (tmp_path / "data.json").write_text("[]")
        overrides.append(f"data.path={tmp_path / 'data.json'}")
    if data.get("data", {}).get("root"):
        (tmp_path / "audio").mkdir()
        overrides.append(f"data.root={tmp_path / 'audio'}")
    return overrides


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_names_its_launch_command(path, tmp_path):
    recipe = load_recipe(path, _local_paths(path, tmp_path))
    assert recipe.rollout.num_generations >= 2
    first_lines = path.read_text().splitlines()[:3]
    assert any("grpo-audio" in line for line in first_lines if line.startswith("#"))


def test_defaults_equal_demo_shape():
    recipe = load_recipe(None)
    assert recipe.model.source == "tiny" and recipe.data.source == "synthetic"
    assert [t.name for t in recipe.rewards.terms] == ["accuracy", "format"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.num_generation=4", "unknown key 'rollout.num_generation'; did you mean 'rollout.num_generations'?"),
        ("trainer.learning_rat=1e-6", "did you mean 'trainer.learning_rate'?"),
        ("modle.source=tiny", "did you mean 'model'?"),
        ("model.tiny.hiden_size=8", "did you mean 'model.tiny.hidden_size'?"),
    ],
)
def test_misspelled_key_fails_with_suggestion(override, message):
    with pytest.raises(RecipeError, match=None) as info:
        load_recipe(None, [override])
    assert message in str(info.value)


@pytest.mark.parametrize(
    "override, field",
    [
        ("rollout.temperature=hot", "rollout.temperature"),
        ("rollout.num_generations=2.5", "rollout.num_generations"),
        ("trainer.max_steps=many", "trainer.max_steps"),
        ("model.freeze_encoder=3", "model.freeze_encoder"),
        ("data.synthetic.tasks=[pitch, loudness]", "data.synthetic.tasks[1]"),
    ],
)
def test_wrong_type_names_the_field(override, field):
    with pytest.raises(RecipeError) as info:
        load_recipe(None, [override])
    assert f"{field}: expected" in str(info.value)


def test_recipes_read_yaml_1_2_scalars(tmp_path):
    # YAML 1.1 (PyYAML's default) reads 1e-6 as a string and `no` as False: TRL's save_strategy "no" would break.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  learning_rate: 1e-6\n  save_strategy: no\n")
    loaded = load_recipe(recipe)
    assert loaded.trainer["learning_rate"] == 1e-6 and loaded.trainer["save_strategy"] == "no"
    assert load_recipe(None, ["trainer.save_strategy=no"]).trainer["save_strategy"] == "no"
    with pytest.raises(RecipeError, match="model.freeze_encoder: expected bool, got 'yes'"):
        load_recipe(None, ["model.freeze_encoder=yes"])


def test_unknown_reward_name_suggests():
    with pytest.raises(RecipeError, match="unknown reward 'acuracy'; did you mean 'accuracy'"):
        load_recipe(None, ["rewards.terms=[{name: acuracy}]"])


def test_group_size_must_divide_generation_batch():
    with pytest.raises(RecipeError, match="not a multiple of rollout.num_generations=3"):
        load_recipe(None, ["rollout.num_generations=3", "trainer.per_device_train_batch_size=8"])
    recipe = load_recipe(None, ["rollout.num_generations=3", "trainer.per_device_train_batch_size=6"])
    assert generation_batch_size(recipe) == 6


def test_trainer_keys_owned_by_other_sections_are_redirected():
    with pytest.raises(RecipeError, match="trainer.temperature is set in rollout.temperature instead"):
        load_recipe(None, ["trainer.temperature=0.7"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.repetition_penalty=1.1", "trainer.repetition_penalty is not supported: a repetition penalty"),
        ("trainer.min_p=0.05", "trainer.min_p is not supported"),
        ("trainer.generation_kwargs={suppress_tokens: [5]}", "trainer.generation_kwargs is not supported"),
        ("rollout.temperature=0", r"rollout.temperature=0.0: GRPO samples, so it must be > 0"),
        ("rollout.temperature=-0.5", r"rollout.temperature=-0.5"),
        ("rollout.top_p=1.5", r"rollout.top_p=1.5: must be in \(0, 1\]"),
        ("rollout.top_p=0", r"rollout.top_p=0.0"),
        ("rollout.top_k=-1", r"rollout.top_k=-1: must be >= 0"),
        ("rollout.max_completion_length=-3", r"rollout.max_completion_length=-3: must be at least 1"),
    ],
)
def test_sampling_the_log_prob_pass_could_not_reproduce_is_refused(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, [override])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="data.path: file not found: .*missing.jsonl"):
        load_recipe(None, ["data.source=jsonl", f"data.path={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(RecipeError, match="no template 'nope'"):
        load_recipe(None, ["prompt.template=nope"])


def test_cold_start_on_a_pretrained_model_needs_an_explicit_opt_in(tmp_path):
    # The warm-up's answers are random: on a model that already answers it would train them back to chance.
    pretrained = ["model.source=pretrained", f"model.path={tmp_path}", "coldstart.steps=5"]
    with pytest.raises(RecipeError) as info:
        load_recipe(None, pretrained)
    message = str(info.value)
    assert "coldstart.steps=5 with model.source 'pretrained'" in message and "random answers" in message
    assert "set coldstart.steps=0, or coldstart.allow_pretrained=true" in message and "\n" not in message
    assert load_recipe(None, [*pretrained, "coldstart.allow_pretrained=true"]).coldstart.steps == 5
    assert load_recipe(None, [*pretrained, "coldstart.steps=0"]).coldstart.steps == 0
    # the tiny model starts at chance, so its cold start needs no opt-in
    assert load_recipe(None, ["coldstart.steps=5"]).coldstart.allow_pretrained is False


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  source: tiny\n rollout: [\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["config", "--set", "rollout.num_generation=4"], "did you mean 'rollout.num_generations'"),
        (["train", "missing.yaml"], "recipe file not found: missing.yaml"),
        (["config", "--set", "rollout.temperature=hot"], "rollout.temperature: expected float"),
        (["config", "--set", "rewards.terms=[{name: nope}]"], "unknown reward 'nope'"),
        (["config", "--set", "rollout.num_generations=3"], "not a multiple of rollout.num_generations=3"),
    ],
)
def test_cli_reports_bad_recipes_in_one_line(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_config_prints_resolved_recipe_with_overrides(capsys):
    assert main(["config", str(shipped_dir("configs") / "demo.yaml"), "--set", "trainer.learning_rate=2e-6"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 2.0e-06" in out and "num_generations: 4" in out


def test_a_problem_from_an_override_is_reported_as_from_set():
    demo = str(ROOT / "configs" / "demo.yaml")
    with pytest.raises(RecipeError) as caught:
        load_recipe(demo, ["rollout.num_generation=4"])
    assert str(caught.value).startswith("--set rollout.num_generation=4: unknown key 'rollout.num_generation'")
    with pytest.raises(RecipeError, match=r"^--set trainer.learning_rat=0.1: unknown key 'trainer.learning_rat'"):
        load_recipe(demo, ["trainer.learning_rat=0.1"])
    with pytest.raises(RecipeError, match=r"^--set trainer.learning_rate=-1: trainer.learning_rate=-1.0: must be > 0"):
        load_recipe(demo, ["trainer.learning_rate=-1"])
    with pytest.raises(RecipeError, match=r"^--set rewards.terms=\[\{name: accuracy, weight: .nan\}\]: "):
        load_recipe(demo, ["rewards.terms=[{name: accuracy, weight: .nan}]"])
    with pytest.raises(RecipeError, match=r"^--set rollout=\{num_generation: 4\}: unknown key"):
        load_recipe(demo, ["rollout={num_generation: 4}"])


def test_a_problem_in_the_file_is_still_reported_as_from_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout:\n  num_generation: 4\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, ["trainer.max_steps=2"])
    assert str(caught.value).startswith(f"{recipe}: unknown key 'rollout.num_generation'")


@pytest.mark.parametrize("report_to", ["[tensorboard]", "tensorboard", "[wandb]"])
def test_a_tracker_that_is_not_installed_is_refused_before_anything_runs(monkeypatch, report_to):
    import importlib.util

    real = importlib.util.find_spec
    absent = {"tensorboard", "tensorboardX", "wandb"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    with pytest.raises(RecipeError) as caught:
        load_recipe(None, [f"trainer.report_to={report_to}"])
    message = str(caught.value)
    assert message.startswith(f"--set trainer.report_to={report_to}: trainer.report_to names")
    assert "pip install 'grpo-audio[tracking]'" in message and "\n" not in message


def test_an_installed_tracker_passes_the_check(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboardX" else real(name, *a)
    )
    assert load_recipe(None, ["trainer.report_to=[tensorboard]"]).trainer["report_to"] == ["tensorboard"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_resumes_by_default(path, tmp_path):
    recipe = load_recipe(path, _local_paths(path, tmp_path))
    assert recipe.run.overwrite is False and recipe.run.resume == "auto"


def test_overwrite_says_what_it_removes(tmp_path, capsys):
    from grpo_audio.train.run_dir import MARKER, open_run_dir

    run_dir = tmp_path / "run"
    for step in (2, 4):
        (run_dir / "trainer" / f"checkpoint-{step}").mkdir(parents=True)
    (run_dir / "final_model").mkdir()
    (run_dir / MARKER).write_text("{}")
    opened = open_run_dir(load_recipe(None, [f"run.output_dir={run_dir}", "run.overwrite=true"]))
    assert opened.resume_checkpoint is None and not any(run_dir.iterdir())
    assert capsys.readouterr().out == (
        f"grpo-audio: run.overwrite=true: removing the run in {run_dir} (checkpoints at steps 2, 4; a final model)\n"
    )
