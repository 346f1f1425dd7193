"""Training callbacks: ``metrics.jsonl`` in the run directory, a one-line-per-step progress display, the run record
sent to the trackers, and the recipe's held-out evaluations."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from grpo_audio.console import say
from grpo_audio.distributed import share_from_main
from grpo_audio.files import append_jsonl

# Keys shown on the progress line, in order, when present.
_SHOWN = ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length")


def _clean(value):
    """JSON has no NaN/inf: write them as null rather than emitting invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFileCallback(TrainerCallback):
    """Appends every log event as one JSON object per line: ``{"step": N, ...TRL metrics...}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, **{k: _clean(v) for k, v in logs.items()}}
        append_jsonl(self.path, [record])


class ProgressLineCallback(TrainerCallback):
    """Prints ``step i/N | R_total | every reward term | KL | s/step | ETA`` after each logged step, with
    ``groups kept/generated in r round(s)`` under dynamic sampling, and ``unscored n (x%)`` before the timing when
    some completions got no R_total because a reward term failed."""

    def __init__(self, term_names: list[str], printer=print) -> None:
        self.term_names = term_names
        self.printer = printer
        self._start = None
        self._first_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._first_step = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        step, total = state.global_step, state.max_steps
        if self._first_step is None:  # a resumed run starts counting at its checkpoint, not at 0
            self._first_step = step - 1
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        per_step = elapsed / max(step - self._first_step, 1)
        reward = logs["reward"]  # None when every completion of the step went unscored: there is no mean to show
        parts = [f"step {step}/{total}", f"R_total {reward:.3f}" if reward is not None else "R_total n/a"]
        for name in self.term_names:
            value = logs.get(f"rewards/{name}/mean")
            if value is not None:
                parts.append(f"{name} {value:.3f}")
        for key in _SHOWN[1:]:
            if key in logs and logs[key] is not None:
                parts.append(f"{key.split('/')[-1]} {logs[key]:.3g}")
        if "dynamic_sampling/groups_generated" in logs:  # groups trained on / generated, over how many rounds
            parts.append(
                f"groups {logs['dynamic_sampling/groups_kept']:g}/{logs['dynamic_sampling/groups_generated']:g} "
                f"in {logs['dynamic_sampling/rounds']:g} round(s)"
            )
        if logs.get("rewards/unscored_frac"):  # completions left without R_total because a reward term failed
            count = logs.get("rewards/unscored")
            counted = f"{count:g} " if count is not None else ""
            parts.append(f"unscored {counted}({logs['rewards/unscored_frac']:.0%})")
        parts.append(f"{per_step:.1f} s/step")
        parts.append(f"ETA {per_step * max(total - step, 0):.0f} s")
        self.printer(" | ".join(parts), flush=True)


class RunRecordToTrackers(TrainerCallback):
    """Sends the run record (provenance + resolved recipe) to TensorBoard and W&B when the recipe enables them.

    Runs after transformers' own tracker callbacks have opened their writers (callbacks run in order, and ours
    are added after the integrations).
    """

    def __init__(self, record: dict, callback_handler) -> None:
        self.record = record
        self.callback_handler = callback_handler  # the trainer's: its callbacks include the tracker integrations

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        text = json.dumps(self.record, indent=2, default=str)
        for callback in self.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.add_text("run_record", f"```\n{text}\n```")
            wandb = getattr(callback, "_wandb", None)
            if wandb is not None and getattr(wandb, "run", None) is not None:
                wandb.config.update({"grpo_audio_run_record": self.record}, allow_val_change=True)


class PeriodicEvaluation(TrainerCallback):
    """The recipe's ``eval`` section while training runs (``grpo_audio.evaluation.during_training``).

    Step 0 (a fresh run, ``before_training``) and the end (``at_end``, unless the last step was just evaluated): the
    metrics are logged as a record of their own (``log``, the trainer's: metrics.jsonl and the trackers). Every
    ``every_steps`` steps: they join that step's metrics (``record``), so they are logged with it. Process 0 evaluates,
    the others wait for its numbers (``share_from_main``: every process must call the callback alike). Process 0
    prints each evaluation as the evaluator describes it (``HeldOutEvaluator.describe``: one line per set).

    Best checkpoint (``best_metric``): a better value at an evaluated step makes that step's checkpoint (saved in the
    same step, since every_steps is a multiple of save_steps) the trainer state's ``best_model_checkpoint``, which
    checkpoint rotation never deletes; the end's evaluation can make the final model the best.
    """

    def __init__(self, evaluator, spec, record, log) -> None:
        self.evaluator = evaluator  # a HeldOutEvaluator: called for the metrics, ``describe`` for the lines
        self.spec = spec  # the recipe's EvalSection
        self.record = record
        self.log = log
        self.history: list[dict] = []  # {"step", "metrics"} of every evaluation of this process's lifetime
        self.final_is_best = False
        self._last_step: int | None = None

    def _evaluate(self, model, state) -> dict[str, float]:
        step = state.global_step
        metrics = share_from_main(lambda: self.evaluator(model, step))
        self.history.append({"step": step, "metrics": metrics})
        self._last_step = step
        if state.is_world_process_zero:
            for line in self.evaluator.describe(step, metrics):
                say(line)
        return metrics

    def _improves(self, state, metrics: dict[str, float]) -> bool:
        name = self.spec.best_metric
        if name is None or metrics.get(name) is None:
            return False
        value, best = metrics[name], state.best_metric
        return best is None or (value > best if self.spec.best_mode == "max" else value < best)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.spec.before_training and state.global_step == 0:
            self.log(self._evaluate(model, state))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.spec.every_steps
        if every > 0 and state.global_step % every == 0:
            metrics = self._evaluate(model, state)
            if self._improves(state, metrics):
                state.best_metric = metrics[self.spec.best_metric]
                state.best_model_checkpoint = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self.record(metrics)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.spec.at_end and self._last_step != state.global_step:
            metrics = self._evaluate(model, state)
            if self._improves(state, metrics):
                state.best_metric = metrics[self.spec.best_metric]
                self.final_is_best = True
            self.log(metrics)
