"""A full disk or a failing write during a checkpoint or the final save (fault injection): the run stops with one
line naming the path and the error, the previous checkpoint stays loadable, and the same command resumes."""

import errno
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from grpo_audio.cli import main
from grpo_audio.recipe import load_recipe
from grpo_audio.train.run import train
from grpo_audio.train.run_dir import CheckpointWriteError
from grpo_audio.train.trainer import AudioGRPOTrainer

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def overrides(run_dir) -> list[str]:
    return [
        f"run.output_dir={run_dir}",
        "data.synthetic.num_questions=8",
        "rollout.max_completion_length=8",
        "trainer.max_steps=3",
        "trainer.save_steps=1",
    ]


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original = AudioGRPOTrainer._save_optimizer_and_scheduler

    def disk_full_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            raise DISK_FULL
        return original(self, output_dir)

    monkeypatch.setattr(AudioGRPOTrainer, "_save_optimizer_and_scheduler", disk_full_at_step_2)
    with pytest.raises(CheckpointWriteError) as caught:
        train(load_recipe(None, overrides(run_dir)))
    message = str(caught.value)
    assert message.startswith(f"could not write the checkpoint to {run_dir / 'trainer' / '.staging' / 'checkpoint-2'}")
    assert "No space left on device" in message and "\n" not in message
    previous = run_dir / "trainer" / "checkpoint-1"
    assert sorted(p.name for p in (run_dir / "trainer").glob("checkpoint-*")) == ["checkpoint-1"]
    load_file(previous / "model.safetensors")
    torch.load(previous / "optimizer.pt", weights_only=True)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("CheckpointWriteError: could not write")

    monkeypatch.setattr(AudioGRPOTrainer, "_save_optimizer_and_scheduler", original)  # room again
    train(load_recipe(None, overrides(run_dir)))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["resumes"][0]["checkpoint"].endswith("checkpoint-1")


@pytest.mark.slow
def test_a_full_disk_during_the_final_save_is_one_line_and_keeps_the_checkpoints(tmp_path, monkeypatch, capsys):
    from grpo_audio.train import run as training

    def disk_full(*args, **kwargs):
        raise DISK_FULL

    monkeypatch.setattr(training, "save_checkpoint", disk_full)
    run_dir = tmp_path / "run"
    argv = ["train"]
    for item in overrides(run_dir):
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"error: could not write the final model to {run_dir / 'final_model'}: No space left on device; the previous "
        "checkpoint is intact, so the same command resumes from it once there is room\n"
    )
    assert "Traceback" not in err
    assert not (run_dir / "final_model").exists()
    assert (run_dir / "trainer" / "checkpoint-3" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_failed_write_on_one_of_two_processes_stops_both_at_once(tmp_path):
    """Process 0's rename of checkpoint-2 into place fails (a full disk); process 1's part of the save succeeded.
    Both stop at that save, each with one line (process 1 names process 0's error), instead of process 1 waiting at
    the next collective until the process group times out; checkpoint-1 stays, and the same command resumes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_scale_out import launch

    run_dir = tmp_path / "run"
    failed = launch(run_dir, 2, tmp_path / "probe.jsonl", "trainer.max_steps=3", fail_rename_at=2)
    target = run_dir / "trainer" / "checkpoint-2"
    own = f"could not write the checkpoint to {target}: No space left on device"
    # Both processes write to one stderr pipe, so their lines may interleave: look for each, not at line starts.
    assert failed.stderr.count(f"error: {own}") == 1, failed.stderr[-3000:]  # process 0, its own error
    assert failed.stderr.count(f"error: process 0 failed: CheckpointWriteError: {own}") == 1  # process 1
    # Each process ends on its one line (exit 2; the launcher may stop the second before it exits by itself), and
    # the only traceback is the launcher's own report of failed children.
    assert "exitcode  : 2 " in failed.stderr
    assert not re.search(r'File "[^"]*(grpo_audio|disk_full_run)', failed.stderr)
    assert sorted(p.name for p in (run_dir / "trainer").glob("checkpoint-*")) == ["checkpoint-1"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("CheckpointWriteError: could not write")

    resumed = launch(run_dir, 2, tmp_path / "probe.jsonl", "trainer.max_steps=3")
    assert "resuming from" in resumed.stdout
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
