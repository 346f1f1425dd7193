"""run.json's status is always true: ``failed`` with the error, ``stopped`` after Ctrl-C, ``completed``; a run that
ended before its first checkpoint does not block the corrected rerun, which starts in its place and says so; a
problem with the inputs (recipe, data, audio) leaves no run directory at all."""

import json

import pytest

from grpo_audio.data.rows import DataError
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.recipe import load_recipe
from grpo_audio.train.run import train


def status(run_dir):
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.slow
def test_a_data_error_leaves_no_run_directory_and_the_corrected_rerun_trains(tmp_path, capsys):
    manifest = write_synthetic_set(tmp_path / "data", 8, ["pitch"], seed=0)
    good = manifest.read_text()
    rows = [json.loads(line) for line in good.splitlines()]
    rows[3]["answer"] = "medium"  # not among the choices
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    overrides = [
        f"run.output_dir={run_dir}",
        "data.source=jsonl",
        f"data.path={manifest}",
        "rollout.max_completion_length=8",
        "trainer.max_steps=1",
        "trainer.per_device_train_batch_size=8",
    ]
    with pytest.raises(DataError):
        train(load_recipe(None, overrides))
    assert not run_dir.exists()
    assert f"grpo-audio: removed {run_dir}: the run stopped on its input before training" in capsys.readouterr().out

    manifest.write_text(good)  # corrected
    train(load_recipe(None, overrides))
    assert status(run_dir)["status"] == "completed"


@pytest.mark.slow
def test_any_other_early_failure_is_recorded_and_the_rerun_replaces_the_dead_run(tmp_path, capsys, monkeypatch):
    from grpo_audio.train import run as training

    run_dir = tmp_path / "run"
    overrides = [f"run.output_dir={run_dir}", "rollout.max_completion_length=8", "trainer.max_steps=1",
                 "data.synthetic.num_questions=8", "trainer.per_device_train_batch_size=8"]  # fmt: skip
    real = training.make_trainer

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (a stand-in)")

    monkeypatch.setattr(training, "make_trainer", broken)
    with pytest.raises(RuntimeError):
        train(load_recipe(None, overrides))
    record = status(run_dir)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: CUDA out of memory (a stand-in)"

    monkeypatch.setattr(training, "make_trainer", real)
    capsys.readouterr()
    train(load_recipe(None, overrides))
    assert f"grpo-audio: {run_dir} holds a run that failed before its first checkpoint (RuntimeError: " in (
        capsys.readouterr().out
    )
    assert status(run_dir)["status"] == "completed"


def test_a_stopped_run_with_a_checkpoint_is_resumed_not_replaced(tmp_path):
    from grpo_audio.train.run_dir import MARKER, ended_before_a_checkpoint

    run_dir = tmp_path / "run"
    (run_dir / "trainer" / "checkpoint-2").mkdir(parents=True)
    (run_dir / MARKER).write_text(json.dumps({"status": "stopped", "error": "interrupted"}))
    assert ended_before_a_checkpoint(run_dir) is None
    (run_dir / "trainer" / "checkpoint-2").rmdir()
    assert ended_before_a_checkpoint(run_dir) == "stopped before its first checkpoint (interrupted)"
    (run_dir / MARKER).write_text(json.dumps({"status": "running"}))  # maybe alive: never replaced
    assert ended_before_a_checkpoint(run_dir) is None
