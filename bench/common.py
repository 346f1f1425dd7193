"""What the training benchmarks share: a per-step timer (the model and trainer come from the harness's own build
path, ``grpo_audio.train.run.build_model`` and ``grpo_audio.train.build.make_trainer``)."""

import time

from transformers import TrainerCallback


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
