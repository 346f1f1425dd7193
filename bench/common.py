"""What the training benchmarks share: the tiny model the harness would build, and a per-step timer."""

import time

from transformers import TrainerCallback

from grpo_audio.data.manifest import AudioQuestion
from grpo_audio.data.prompting import PromptTemplate
from grpo_audio.data.vocabulary import vocabulary_texts
from grpo_audio.model.build import apply_freezing, build_tokenizer_and_model
from grpo_audio.recipe import load_recipe


def harness_model(rows: list[AudioQuestion], template: PromptTemplate, *overrides: str):
    """The tokenizer and tiny model ``grpo-audio train`` builds for these rows (recipe defaults plus ``overrides``,
    e.g. ``model.tiny.hidden_size=128``), frozen as the recipe says."""
    recipe = load_recipe(None, list(overrides))
    tokenizer, model = build_tokenizer_and_model(recipe.model, recipe.run.seed, vocabulary_texts(rows, template))
    apply_freezing(model, recipe.model)
    return tokenizer, model


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
