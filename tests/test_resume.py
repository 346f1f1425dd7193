"""Reproducible runs: same seed -> same metrics; SIGKILL + resume == uninterrupted; crash-safe checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_audio.recipe import RecipeError, load_recipe
from grpo_audio.train.run import train

KILL_RUN = Path(__file__).parent / "helpers" / "kill_run.py"
# Wall-clock fields, and HF's train_loss (the mean loss over the steps run *in this process*), differ by nature.
UNSTABLE = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


def overrides(run_dir, *extra):
    return [
        f"run.output_dir={run_dir}",
        "data.synthetic.num_questions=8",
        "rollout.max_completion_length=12",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.learning_rate=1e-3",
        *extra,
    ]


def metrics(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in UNSTABLE and not k.startswith("time/")} for row in rows]


def weights(run_dir):
    return load_file(Path(run_dir) / "final_model" / "model.safetensors")


def assert_same_run(a, b):
    assert metrics(a) == metrics(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rollouts = [(Path(d) / "rollouts.jsonl").read_text() for d in (a, b)]
    assert rollouts[0] == rollouts[1].replace(str(b), str(a))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(load_recipe(None, overrides(run_dir)))
    return run_dir


def kill(mode, step, run_dir, *extra):
    tests = str(Path(__file__).parent)  # reward plugins named helpers.<module>
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, str(KILL_RUN), mode, str(step), *overrides(run_dir, *extra)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_a_different_seed_differs(uninterrupted, tmp_path):
    train(load_recipe(None, overrides(tmp_path / "again")))
    assert_same_run(uninterrupted, tmp_path / "again")
    train(load_recipe(None, overrides(tmp_path / "other", "run.seed=1")))
    assert metrics(tmp_path / "other") != metrics(uninterrupted)


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    kill("after_save", 2, run_dir)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    train(load_recipe(None, overrides(run_dir)))
    assert_same_run(uninterrupted, run_dir)
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and len(status["resumes"]) == 1
    assert status["resumes"][0]["checkpoint"].endswith("checkpoint-2")


@pytest.mark.slow
def test_a_resumed_run_keeps_the_cold_started_starting_point_as_its_kl_reference(tmp_path):
    """Full fine-tuning with beta > 0: the KL reference is a frozen copy of the starting point, here the model after
    its cold start. A resumed run does not redo the cold start; it reads the starting point back from
    initial_model/, so it ends exactly as the uninterrupted run."""
    mixed = 'rewards.terms=[{name: "helpers.mixed_signal:half_informative"}]'  # groups with reward variance
    extra = ("coldstart.steps=2", "trainer.beta=0.04", "trainer.learning_rate=5e-2", mixed)
    whole = tmp_path / "whole"
    train(load_recipe(None, overrides(whole, *extra)))
    assert any(m.get("kl", 0) > 0 for m in metrics(whole))  # the reference is in use
    run_dir = tmp_path / "run"
    kill("after_save", 2, run_dir, *extra)
    train(load_recipe(None, overrides(run_dir, *extra)))
    assert_same_run(whole, run_dir)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    kill("during_save", 4, run_dir)
    trainer_dir = run_dir / "trainer"
    assert sorted(p.name for p in trainer_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (trainer_dir / ".staging" / "checkpoint-4" / "model.safetensors").is_file()  # the half-written one
    previous = trainer_dir / "checkpoint-2"
    assert json.loads((previous / "trainer_state.json").read_text())["global_step"] == 2
    load_file(previous / "model.safetensors")
    torch.load(previous / "optimizer.pt", weights_only=True)
    # metrics of steps 3-4 were logged before the crash; a resume redoes them without duplicates
    train(load_recipe(None, overrides(run_dir)))
    assert [m["step"] for m in metrics(run_dir) if "reward" in m] == [1, 2, 3, 4]
    assert not (trainer_dir / ".staging").exists()
    assert_same_run(uninterrupted, run_dir)


def test_resume_refuses_a_changed_recipe_unless_allowed(uninterrupted):
    with pytest.raises(RecipeError, match=r"recipe differs .*trainer.learning_rate: 0.001 -> 0.002"):
        train(load_recipe(None, overrides(uninterrupted, "trainer.learning_rate=2e-3")))
    with pytest.raises(RecipeError, match="run.resume is 'never'"):
        train(load_recipe(None, overrides(uninterrupted, "run.resume=never")))


def test_a_run_without_checkpoint_is_not_resumed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(RecipeError, match="without a complete checkpoint to resume from"):
        train(load_recipe(None, overrides(run_dir)))


def test_run_record_has_provenance(uninterrupted):
    record = json.loads((uninterrupted / "run_record.json").read_text())
    assert record["packages"]["trl"] == "1.16.0" and "torch" in record["packages"]
    assert record["seeds"]["run"] == 0
    assert len(record["dataset"]["manifest_sha256"]) == 64 and len(record["dataset"]["audio_sha256"]) == 8
    assert record["prompt_template"]["name"] == "audio_cot_v1"
    assert "cpu_count" in record["hardware"]
    rollouts = [json.loads(line) for line in (uninterrupted / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 4 * 8
    first = rollouts[0]
    assert {"prompt_id", "audio", "completion", "rewards", "R_total", "advantage", "length", "finish_reason"} <= set(
        first
    )
    assert set(first["rewards"]) == {"accuracy", "format"}
    step = [m for m in metrics(uninterrupted) if "reward" in m][0]
    full = json.loads((uninterrupted / "metrics.jsonl").read_text().splitlines()[0])
    assert {"time/rollout_s", "time/scoring_s", "time/update_s", "time/audio_features_s"} <= set(full)
    assert "frac_reward_zero_std" in step


def test_report_renders_plots_and_a_self_contained_page(uninterrupted, tmp_path, capsys):
    from grpo_audio.cli import main

    other = tmp_path / "other"
    train(load_recipe(None, overrides(other, "run.seed=1")))
    assert main(["report", str(uninterrupted), "--compare", str(other), "--steps", "1,4", "--out", str(tmp_path)]) == 0
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"overview.png", "r_total.png", "reward_term_accuracy.png", "entropy.png", "think_length_words.png"} <= pngs
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    page = (tmp_path / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs) - 1  # every panel, embedded
    assert "Sample rollouts at step 1" in page and "Sample rollouts at step 4" in page
    assert f"Compared with {other}" in page
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl has no training steps" in capsys.readouterr().err


def test_run_record_reaches_tensorboard_and_wandb_writers():
    from types import SimpleNamespace

    from grpo_audio.train.callbacks import RunRecordToTrackers

    texts, configs = [], []
    tensorboard = SimpleNamespace(tb_writer=SimpleNamespace(add_text=lambda tag, text: texts.append((tag, text))))
    wandb = SimpleNamespace(
        _wandb=SimpleNamespace(run=object(), config=SimpleNamespace(update=lambda d, **kw: configs.append(d)))
    )
    callback = RunRecordToTrackers({"seed": 3}, SimpleNamespace(callbacks=[tensorboard, wandb]))
    callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=True), None)
    assert texts[0][0] == "run_record" and '"seed": 3' in texts[0][1]
    assert configs == [{"grpo_audio_run_record": {"seed": 3}}]


def test_judge_caches_travel_with_checkpoints(tmp_path):
    from rewards.judge.cache import restore_judge_caches, save_judge_caches

    cache = tmp_path / "judge" / "verdicts.jsonl"
    cache.parent.mkdir()
    cache.write_text('{"key": "k", "value": 1.0}\n')
    checkpoint = tmp_path / "checkpoint-2"
    save_judge_caches([cache, tmp_path / "never_written.jsonl"], checkpoint)
    cache.unlink()  # lost in the crash
    assert restore_judge_caches([cache], checkpoint) == [cache]
    assert cache.read_text() == '{"key": "k", "value": 1.0}\n'
    cache.write_text("newer\n")
    assert restore_judge_caches([cache], checkpoint) == [] and cache.read_text() == "newer\n"


class _Unpickled:
    """Unpickling this touches a marker file: the proof that a pickle was read."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.slow
def test_resume_never_reads_a_pickle_weight_file(uninterrupted, tmp_path):
    import pickle

    from grpo_audio.model.checkpoint_load import CheckpointError

    run_dir = tmp_path / "run"
    checkpoint = stopped_copy(uninterrupted, run_dir)
    marker = tmp_path / "UNPICKLED"
    with (checkpoint / "pytorch_model.bin").open("wb") as fh:
        pickle.dump(_Unpickled(marker), fh)
    record_before = (run_dir / "run.json").read_text()
    recipe = load_recipe(None, overrides(run_dir, "run.allow_recipe_change=true"))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: pickle weights are refused, safetensors only"):
        train(recipe)
    assert not marker.exists()
    assert (run_dir / "run.json").read_text() == record_before  # refused before the record was touched


def stopped_copy(uninterrupted, run_dir):
    """A copy of the finished run whose record says it stopped, so the same command resumes its last checkpoint."""
    import shutil

    shutil.copytree(uninterrupted, run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "stopped"}))
    return sorted((run_dir / "trainer").glob("checkpoint-*"))[-1]


@pytest.mark.parametrize("fault", ["integer tensor", "truncated file"])
def test_resume_refuses_checkpoint_weights_the_trainer_would_misread(uninterrupted, tmp_path, fault):
    from safetensors.torch import save_file

    from grpo_audio.model.checkpoint_load import CheckpointError

    run_dir = tmp_path / "run"
    checkpoint = stopped_copy(uninterrupted, run_dir)
    path = checkpoint / "model.safetensors"
    if fault == "integer tensor":  # the Trainer would copy it into a float parameter, cast without a word
        state = load_file(path)
        name = sorted(state)[0]
        state[name] = state[name].to(torch.int8)
        save_file(state, path)
        expected = rf"{path}: {name} is stored as I8, expected a floating-point dtype \(BF16, F16, F32, F64\)"
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        expected = rf"{path}: not a readable safetensors file \(truncated: \d+ bytes, its header describes \d+\)"
    record_before = (run_dir / "run.json").read_text()
    with pytest.raises(CheckpointError, match=expected):
        train(load_recipe(None, overrides(run_dir, "run.allow_recipe_change=true")))
    assert (run_dir / "run.json").read_text() == record_before  # refused before the record was touched
