"""Audio-feature reuse: encoder calls and step time of ``AudioGRPOTrainer`` with and without it.

    python bench/bench_feature_reuse.py [--clips 16] [--prompts 8] [--G 4] [--steps 8] [--encoder-layers 1]

Three ways the trainer can get a batch's audio (``grpo_audio.audio.featurizer.AudioFeaturizer``), same model, data and
config otherwise:

* ``reuse + cache``: the harness default while the encoder and adapter are frozen: adapter features computed once
  per clip (one encoder call per new clip, so its features do not depend on its batch-mates) and kept in an LRU
  cache across steps, so a clip seen before costs no encoder call at all;
* ``reuse, no cache`` (``embed_cache_mb=0``): features computed once per generation batch (one call per clip) and
  shared by the rollout and every log-prob pass, recomputed the next step;
* ``no reuse`` (the ``mel`` form, what the harness uses when the encoder or adapter trains): log-mels go into every
  forward and the encoder and adapter run inside it: in the rollout's prompt embedding and in each log-prob pass.

Encoder calls and segments are counted by a forward hook on the encoder, so every call is seen whichever path
made it. The trainer is the one ``grpo-audio train`` builds (``grpo_audio.train.build.make_trainer``, the recipe's
defaults at the sizes given); it runs ``--steps`` optimizer steps per mode on ``--clips`` synthetic clips (pitch,
count, longer); with ``--prompts`` clips per step the cache is warm after ``clips / prompts`` steps. Reported per mode:
encoder calls and 30 s segments encoded per step (mean over all steps), the median step time (wall, and CPU time
of this process: less disturbed by other jobs on a shared machine) and the median
``time/audio_features_s`` (the feature step the harness times on its own), the first ``--warmup`` steps (one-off
kernel and allocator warm-up) left out of the medians.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from common import StepTimer, synthetic_rows_and_model  # bench/ is the script's directory

from grpo_audio.audio.featurizer import AudioFeaturizer, covo_core
from grpo_audio.data.dataset import build_dataset
from grpo_audio.recipe import load_recipe
from grpo_audio.recipe.rubric import recipe_rubric
from grpo_audio.train.build import grpo_config, make_trainer

MODES = {
    "reuse + cache (default)": dict(reuse_embeddings=True),
    "reuse, no cache": dict(reuse_embeddings=True, embed_cache_mb=0),
    "no reuse (mel in every forward)": dict(reuse_embeddings=False),
}


class EncoderCounter:
    def __init__(self, encoder) -> None:
        self.calls = 0
        self.segments = 0
        encoder.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.calls += 1
        self.segments += int(inputs[0].size(0))


def bench_recipe(args):
    """The recipe defaults (tiny model, accuracy + format rubric, HF engine) at the bench's sizes."""
    return load_recipe(
        None,
        [
            f"model.tiny.encoder_layers={args.encoder_layers}",
            f"model.tiny.encoder_d_model={args.encoder_d_model}",
            f"rollout.num_generations={args.G}",
            f"rollout.max_completion_length={args.max_new_tokens}",
            "rollout.temperature=1.0",
            f"trainer.max_steps={args.steps}",
            f"trainer.per_device_train_batch_size={args.prompts * args.G}",
            "trainer.learning_rate=1e-4",
            f"trainer.beta={args.beta}",
            "trainer.save_strategy=no",
        ],
    )


def build(recipe, clips: int, workdir: Path):
    rows, template, tokenizer, model = synthetic_rows_and_model(recipe, clips, workdir)
    return tokenizer, model, build_dataset(rows, tokenizer, template)


def run_mode(args, recipe, featurizer_options: dict, model, tokenizer, dataset, out: Path) -> dict:
    """``--steps`` steps of the trainer ``grpo-audio train`` builds (``make_trainer``), with this featurizer."""
    counter = EncoderCounter(covo_core(model).encoder)
    timer = StepTimer()
    trainer = make_trainer(
        recipe,
        grpo_config(recipe, out),
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        featurizer=AudioFeaturizer(**featurizer_options),
        rubric=recipe_rubric(recipe),
        run_dir=out,
        extra_callbacks=[timer],
    )
    trainer.train()
    features = [e["time/audio_features_s"] for e in trainer.state.log_history if "time/audio_features_s" in e]
    return {
        "calls": counter.calls / args.steps,
        "segments": counter.segments / args.steps,
        "step": statistics.median(timer.seconds[args.warmup :]),
        "cpu": statistics.median(timer.cpu_seconds[args.warmup :]),
        "features": statistics.median(features[args.warmup :]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="distinct clips in the data set")
    parser.add_argument("--prompts", type=int, default=8, help="prompts (clips) per step")
    parser.add_argument("--G", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient (> 0 adds the reference pass)")
    parser.add_argument("--encoder-layers", type=int, default=1, help="tiny Whisper encoder layers")
    parser.add_argument("--encoder-d-model", type=int, default=32, help="tiny Whisper encoder width")
    args = parser.parse_args(argv)
    recipe = bench_recipe(args)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, model, dataset = build(recipe, args.clips, Path(tmp))
        for index, (name, options) in enumerate(MODES.items()):
            out = Path(tmp) / str(index)
            results[name] = run_mode(args, recipe, options, copy.deepcopy(model), tokenizer, dataset, out)
            print(f"{name}: {results[name]}", flush=True)
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}, no GPU"
        if not torch.cuda.is_available()
        else f"machine: {torch.cuda.get_device_name()}"
    )
    print(
        f"tiny Covo-Audio, encoder {args.encoder_layers} layer(s) x d_model {args.encoder_d_model}; {args.clips} "
        f"clips, {args.prompts} prompts x G={args.G}, up to {args.max_new_tokens} new tokens, beta {args.beta}, "
        f"{args.steps} steps per mode, first {args.warmup} not timed"
    )
    print()
    print(
        "| audio features | encoder calls / step | segments encoded / step | median wall s/step | "
        "median CPU s/step | median feature time s/step |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(
            f"| {name} | {r['calls']:.2f} | {r['segments']:.1f} | {r['step']:.3f} | {r['cpu']:.3f} | "
            f"{r['features']:.4f} |"
        )


if __name__ == "__main__":
    main()
