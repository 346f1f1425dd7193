"""What the training benchmarks share: a per-step timer, and synthetic rows with the model ``grpo-audio train``
builds for them (the model and trainer come from the harness's own build path, ``grpo_audio.train.run.build_model``
and ``grpo_audio.train.build.make_trainer``)."""

import argparse
import time
from pathlib import Path

from transformers import TrainerCallback

from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.prompting import load_template
from grpo_audio.data.synthetic import QUESTIONS, write_synthetic_set
from grpo_audio.train.run import build_model


def add_recipe_overrides(parser: argparse.ArgumentParser, scope: str = "") -> None:
    """``--set KEY=VALUE``, repeatable, into ``args.settings``: recipe overrides applied before the bench's own
    (``scope`` says which runs they reach, e.g. " for every run")."""
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a recipe override{scope}, before the bench's own (e.g. trainer.per_device_train_batch_size=8)",
    )


def synthetic_rows_and_model(recipe, questions: int, workdir: Path):
    """``(rows, template, tokenizer, model)``: ``questions`` synthetic clips of every task, written under
    ``workdir/data`` (seed 0), and the recipe's model built for their vocabulary."""
    rows = load_manifest(write_synthetic_set(workdir / "data", questions, list(QUESTIONS), seed=0))
    template = load_template(recipe.prompt.template)
    tokenizer, model = build_model(recipe, rows, template)
    return rows, template, tokenizer, model


class StepTimer(TrainerCallback):
    """Wall seconds and CPU seconds (this process, all threads) of each optimizer step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._start = self._cpu_start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)
