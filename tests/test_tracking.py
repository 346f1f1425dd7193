"""The ``tracking`` extra: a run with ``trainer.report_to: [tensorboard]`` writes TensorBoard event files holding the
same per-step metrics as ``metrics.jsonl``, and the run record (CI installs the extra)."""

import json
import os

import pytest

pytest.importorskip("tensorboard", reason="the tracking extra (pip install -e '.[tracking]') is not installed")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from grpo_audio.recipe import load_recipe
from grpo_audio.train.run import train


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_run_metrics(tiny_recipe, monkeypatch):
    monkeypatch.setitem(os.environ, "WANDB_MODE", "disabled")
    run_dir = train(tiny_recipe("trainer.report_to=[tensorboard]"))
    (events_dir,) = list((run_dir / "trainer" / "runs").iterdir())
    events = EventAccumulator(str(events_dir))
    events.Reload()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in logged if "reward" in m]
    read_back = {e.step: e.value for e in events.Scalars("train/reward")}
    assert read_back == pytest.approx({m["step"]: m["reward"] for m in steps})
    assert "run_record/text_summary" in events.Tags()["tensors"]


def test_the_recipe_check_accepts_an_installed_tensorboard():
    assert load_recipe(None, ["trainer.report_to=[tensorboard]"]).trainer["report_to"] == ["tensorboard"]
