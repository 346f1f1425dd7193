"""Held-out sets scored while training runs: the recipe's ``eval`` section, with the code of ``grpo-audio eval``
(``load_eval_rows``, ``predict``, the official rules, ``compute_metrics``).

Each set's rows are read once, before training (process 0: the same readers and audio policy as ``data``; files
under ``RUN/eval_sets/<name>/``), and its prompts rendered once with the set's template. An evaluation decodes every
row greedily with the HF engine (text-only vocabulary, the recipe's stop tokens), and with ``eval.samples`` = K > 0
also K sampled answers per row at the rollout's temperature, top-p and top-k. Metrics of set ``name``, in [0, 1]:

    eval/<name>/accuracy                     greedy: correct / items (skipped clips and unparsed answers are wrong)
    eval/<name>/<key>/<value>/accuracy       the same per category (the benchmark's task, category, ... fields)
    eval/<name>/sampled_accuracy, pass_at_k  with K > 0: mean over the K x items samples, share of items with one right
    eval/<name>/unparsed                     greedy answers naming no single choice, as a share of items

and ``time/eval_s``, the wall seconds of the whole evaluation. Each evaluation's greedy predictions are written to
``RUN/eval_sets/<name>/step_<N>.jsonl`` (one record per item, as ``grpo-audio eval`` writes them), and each set's
result is printed as one line ``grpo-audio: <line>`` (``HeldOutEvaluator.describe``), with the sampling settings
beside the sampled accuracy:

    eval 'tones' at step 0: accuracy 0.625 greedy, 0.480 sampled at T=0.7 (8 per item), unparsed 0.000, n=32

Sampled accuracy is the policy's expected accuracy at the temperature it trains at; greedy accuracy can sit far from
it (a model at chance whose clips of one class sound alike turns a slight preference into a whole class right or
wrong), which is why the proof of learning reads the sampled one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.console import say
from grpo_audio.data.prompting import load_template
from grpo_audio.data.rows import AudioQuestion
from grpo_audio.data.sources import SkipReport
from grpo_audio.evaluation.metrics import compute_metrics
from grpo_audio.evaluation.runner import check_eval_rows, load_eval_rows, predict, prompt_texts, skipped_records
from grpo_audio.evaluation.scoring import FORMAT_RULES
from grpo_audio.files import write_jsonl
from grpo_audio.model.family import family_for, family_of_model
from grpo_audio.recipe import Recipe
from grpo_audio.recipe.schema import EvalSetSection
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings


@dataclass
class EvalSet:
    """One held-out set, ready to decode: rows, their prompt token ids, the rule, and the clips the policy skipped."""

    name: str
    rows: list[AudioQuestion]
    prompt_ids: list[list[int]]
    rule: str
    template: str  # the template's ident, name@vN
    skipped: SkipReport

    @property
    def items(self) -> int:
        """Items scored per evaluation: the rows, and the skipped clips (scored as wrong)."""
        return len(self.rows) + len(self.skipped.skipped)


def eval_set_recipe(recipe: Recipe, spec: EvalSetSection) -> Recipe:
    """The recipe with its ``data`` section reading the set ``spec`` (same audio policy and resampler)."""
    data = dataclasses.replace(
        recipe.data,
        source=spec.source,
        path=spec.path,
        root=spec.root,
        split=spec.split,
        audio_column=spec.audio_column,
        max_samples=spec.max_samples,
    )
    return dataclasses.replace(recipe, data=data)


def load_eval_sets(
    recipe: Recipe,
    run_dir: Path,
    tokenizer,
    featurizer: AudioFeaturizer,
    heldout_split: tuple[list[AudioQuestion], SkipReport],
) -> list[EvalSet]:
    """Process 0, before training: every set of ``recipe.eval`` read and its prompts rendered (raises ``DataError``
    for a set that cannot be scored, naming the file). ``heldout_split`` is the synthetic held-out split as
    ``load_heldout_rows`` gave it: the rows of every set with source 'synthetic'."""
    sets = []
    for spec in recipe.eval.sets:
        out = run_dir / "eval_sets" / spec.name
        out.mkdir(parents=True, exist_ok=True)
        if spec.source == "synthetic":
            rows, report = heldout_split
            check_eval_rows(rows, report)
            rows = rows[: spec.max_samples] if spec.max_samples else rows
        else:
            rows, report = load_eval_rows(eval_set_recipe(recipe, spec), out)
        template = load_template(spec.template or recipe.prompt.template)
        texts = prompt_texts(rows, tokenizer, template, featurizer, family_for(recipe.model))
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        rule = spec.rule or FORMAT_RULES["mmau" if spec.source == "synthetic" else spec.source]
        sets.append(EvalSet(spec.name, rows, prompt_ids, rule, template.ident, report))
        say(f"eval set {spec.name!r}: {len(rows)} items, rule {rule}, template {template.ident}")
    return sets


class HeldOutEvaluator:
    """Scores a model on the prepared sets (``__call__``); run by process 0 (``grpo_audio.train.callbacks``), which
    prints ``describe``'s lines. ``sampling``: how the sampled answers are drawn (None without ``eval.samples``)."""

    def __init__(self, recipe: Recipe, sets: list[EvalSet], tokenizer, featurizer: AudioFeaturizer, run_dir: Path):
        spec, rollout = recipe.eval, recipe.rollout
        self.sets = sets
        self.tokenizer = tokenizer
        self.featurizer = featurizer
        self.run_dir = run_dir
        self.batch_size = spec.batch_size
        self.samples = spec.samples
        self.seed = recipe.run.seed
        length = spec.max_new_tokens or rollout.max_completion_length
        sampling = {"temperature": rollout.temperature, "top_p": rollout.top_p, "top_k": rollout.top_k}
        self.sampling = {"samples": spec.samples, **sampling} if spec.samples > 0 else None
        self._settings = {
            "greedy": SamplingSettings(max_new_tokens=length, do_sample=False, text_only=rollout.text_only),
            "sampled": SamplingSettings(
                max_new_tokens=length,
                temperature=rollout.temperature,
                top_p=rollout.top_p,
                top_k=rollout.top_k,
                do_sample=True,
                text_only=rollout.text_only,
            ),
        }

    def describe(self, step: int, metrics: dict[str, float]) -> list[str]:
        """One line per set of an evaluation's ``metrics``: greedy accuracy, sampled accuracy with the settings it was
        sampled at, the unparsed share of greedy answers, and the items scored."""
        lines = []
        for item in self.sets:
            prefix = f"eval/{item.name}"
            parts = [f"accuracy {metrics[f'{prefix}/accuracy']:.3f} greedy"]
            if self.sampling is not None:
                parts.append(f"{metrics[f'{prefix}/sampled_accuracy']:.3f} sampled at {self.sampling_label()}")
            parts += [f"unparsed {metrics[f'{prefix}/unparsed']:.3f}", f"n={item.items}"]
            lines.append(f"eval {item.name!r} at step {step}: " + ", ".join(parts))
        return lines

    def sampling_label(self) -> str:
        """``T=0.7 (8 per item)``, with top-p and top-k when they truncate the distribution."""
        settings = self.sampling
        label = f"T={settings['temperature']:g}"
        if settings["top_p"] < 1.0:
            label += f", top-p {settings['top_p']:g}"
        if settings["top_k"] > 0:
            label += f", top-k {settings['top_k']}"
        return f"{label} ({settings['samples']} per item)"

    def record(self) -> dict:
        """What run.json's ``eval`` says about the evaluation itself: each set's items, rule and template, and the
        sampling settings of ``sampled_accuracy`` (None when only greedy answers are scored)."""
        sets = {s.name: {"items": s.items, "rule": s.rule, "template": s.template} for s in self.sets}
        return {"sets": sets, "sampling": self.sampling}

    def _engine(self, model, kind: str) -> HFRolloutEngine:
        markers = self.tokenizer.convert_tokens_to_ids(list(family_of_model(model).prompt_only_tokens))
        eos = list(model.generation_config.eos_token_id)
        pad = self.tokenizer.pad_token_id
        return HFRolloutEngine(self._settings[kind], eos, pad, markers, first_banned_id=len(self.tokenizer))

    def __call__(self, model, step: int) -> dict[str, float]:
        """The metrics above for ``model`` (put in eval mode for the call, its train/eval mode restored after; the
        caller's random state is left untouched, so training continues as it would have without the evaluation)."""
        start = time.perf_counter()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(self.seed + step)
                for item in self.sets:
                    metrics.update(self._score_set(model, item, step, device))
        finally:
            if was_training:
                model.train()
        metrics["time/eval_s"] = time.perf_counter() - start
        return metrics

    def _records(self, model, item: EvalSet, kind: str, samples: int, device: torch.device) -> list[dict]:
        """Scored records of ``samples`` answers per row decoded ``kind`` ("greedy" or "sampled"), skipped clips
        included as missing."""
        engine = self._engine(model, kind)
        args = (item.rows, item.prompt_ids, item.rule, samples, self.batch_size, device)
        records = predict(model, self.tokenizer, self.featurizer, engine, *args)
        return records + skipped_records(item.skipped, samples, item.rule)

    def _score_set(self, model, item: EvalSet, step: int, device: torch.device) -> dict[str, float]:
        prefix = f"eval/{item.name}"
        greedy = self._records(model, item, "greedy", 1, device)
        write_jsonl(self.run_dir / "eval_sets" / item.name / f"step_{step}.jsonl", greedy, default=str)
        result = compute_metrics(greedy, 1)
        overall = result["overall"]
        metrics = {
            f"{prefix}/accuracy": overall["accuracy"],
            f"{prefix}/unparsed": overall["unparsed"] / max(1, overall["items"]),
        }
        for key, values in result["groups"].items():
            for value, stats in values.items():
                metrics[f"{prefix}/{key}/{value}/accuracy"] = stats["accuracy"]
        if self.samples > 0:
            stats = compute_metrics(self._records(model, item, "sampled", self.samples, device), self.samples)
            metrics[f"{prefix}/sampled_accuracy"] = stats["overall"]["accuracy"]
            metrics[f"{prefix}/pass_at_k"] = stats["overall"]["pass_at_k"]
        return metrics
