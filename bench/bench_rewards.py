"""Throughput of the rule-based rewards and of whole rubrics, in completions per second on one CPU core.

    python bench/bench_rewards.py [--n 4000] [--repeats 3] [--judge]

The batch mixes the completions a GRPO run produces (deterministic, seeded): 60 % well-formed reasoning of 30-120
words, 15 % long reasoning (~600 words, some of it looping), 10 % bare answers, 10 % truncated reasoning, 5 % no
tags at all; 4-choice questions. Each line is the best of ``--repeats`` timed passes over the batch through
``RegisteredReward.score_batch`` / ``Rubric.score`` (the code path the trainer uses). The process is pinned to one
core where the OS allows it.

``--judge`` also measures the judge client's own overhead against an in-process loopback server that answers
immediately (no model): the ceiling the HTTP/async plumbing puts on judge throughput, not a judge's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import RewardContext, Rubric, TermSpec, get_reward

WORDS = (
    "the voice is high and clear so it sounds like a woman speaking while the background has soft music and "
    "a dog barks twice then the pitch rises which suggests a question because the tempo is slow"
).split()
CHOICES = ["Man", "Woman", "Child", "Robot"]


def make_batch(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    rng = random.Random(seed)
    completions, samples = [], []
    for i in range(n):
        answer = rng.choice(CHOICES)
        sample = {"id": f"q{i}", "question": "Who is speaking in the audio clip?", "choices": CHOICES,
                  "answer": rng.choice(CHOICES)}  # fmt: skip
        kind = rng.random()
        if kind < 0.60:
            think = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 120))) + f". So: {answer.lower()}."
            text = f"<think>{think}</think>\n<answer>{answer}</answer>"
        elif kind < 0.75:
            loop = " ".join(rng.choice(WORDS) for _ in range(60))
            think = " ".join(rng.choice(WORDS) for _ in range(300)) + (" " + loop) * 5
            text = f"<think>{think}</think>\n<answer>{answer}</answer>"
        elif kind < 0.85:
            text = f"<answer>{answer}</answer>"
        elif kind < 0.95:
            text = "<think>" + " ".join(rng.choice(WORDS) for _ in range(200))
        else:
            text = f"I think it is a {answer.lower()}."
        completions.append(text)
        samples.append(sample)
    return completions, samples


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return n / best


REWARDS = [
    ("accuracy (mmau)", "accuracy", {}),
    ("accuracy (option)", "accuracy", {"rule": "option"}),
    ("accuracy (mmsu)", "accuracy", {"rule": "mmsu"}),
    ("format (search)", "format", {}),
    ("format (strict)", "format", {"mode": "strict"}),
    ("format (adaptive)", "format", {"mode": "adaptive"}),
    ("has_reasoning", "has_reasoning", {}),
    ("consistency_rule", "consistency_rule", {}),
    ("consistency_cesar", "consistency_cesar", {}),
    ("thinking_rule", "thinking_rule", {}),
    ("overthinking", "overthinking", {}),
    ("keywords_rule", "keywords_rule", {}),
]

RUBRICS = {
    "covo rule-based (sum: acc+format+consistency_rule+thinking_rule)": (
        [TermSpec("accuracy"), TermSpec("format"), TermSpec("consistency_rule"), TermSpec("thinking_rule")],
        "sum",
    ),
    "audio_thinker (rule consistency/thinking)": (
        [
            TermSpec("accuracy"),
            TermSpec("format", options={"mode": "adaptive"}),
            TermSpec("consistency_rule", label="consistency"),
            TermSpec("thinking_rule", label="thinking"),
        ],
        "audio_thinker",
    ),  # fmt: skip
    "cesar (acc+format+consistency_cesar+keywords_rule+overthinking)": (
        [
            TermSpec("accuracy"),
            TermSpec("format"),
            TermSpec("consistency_cesar", label="consistency"),
            TermSpec("keywords_rule", label="keywords"),
            TermSpec("overthinking"),
        ],
        "cesar",
    ),  # fmt: skip
    "step_audio_r1 (acc+has_reasoning)": ([TermSpec("accuracy"), TermSpec("has_reasoning")], "step_audio_r1"),
}


def bench_judge(completions: list[str], samples: list[dict]) -> tuple[float, int]:
    reply = json.dumps({"choices": [{"message": {"content": "<score>1</score>"}}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        # distinct reasoning per row so nothing is cached or deduplicated
        batch = [c.replace("<think>", f"<think>[{i}] ", 1) for i, c in enumerate(completions)]
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        reward = get_reward("consistency")
        started = time.perf_counter()
        values = reward.score_batch(batch, samples, RewardContext(), url=url, model="bench", max_concurrency=16)
        elapsed = time.perf_counter() - started
        verdicts = sum(isinstance(v, float) for v in values)  # not None (no reasoning), not a RewardFailure
        return verdicts / elapsed, verdicts
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="completions per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    parser.add_argument("--judge", action="store_true", help="also time the judge client against a loopback server")
    args = parser.parse_args()

    pinned = pin_one_core()
    completions, samples = make_batch(args.n)
    context = RewardContext(step=0, total_steps=100, group_size=8)
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or 'cpu'}), {pinned}")
    print(f"batch: {args.n} completions, mean length {sum(map(len, completions)) / args.n:.0f} characters")
    print(f"best of {args.repeats} passes\n")

    rows = []
    for label, name, options in REWARDS:
        reward = get_reward(name)
        rate = best_rate(lambda r=reward, o=options: r.score_batch(completions, samples, context, **o), args.n,
                         args.repeats)  # fmt: skip
        rows.append((label, rate))
    for label, (specs, combiner) in RUBRICS.items():
        rubric = Rubric(specs, combiner)
        rows.append((label, best_rate(lambda r=rubric: r.score(completions, samples, context), args.n, args.repeats)))

    width = max(len(label) for label, _ in rows)
    print(f"{'reward / rubric':<{width}}  {'completions/s':>14}  {'us/completion':>13}")
    print(f"{'-' * width}  {'-' * 14}  {'-' * 13}")
    for label, rate in rows:
        print(f"{label:<{width}}  {rate:>14,.0f}  {1e6 / rate:>13.1f}")

    if args.judge:
        rate, judged = bench_judge(completions, samples)
        print(f"\njudge client overhead (loopback server, instant replies, 16 in flight): {rate:,.0f} verdicts/s "
              f"over {judged} rows")  # fmt: skip


if __name__ == "__main__":
    main()
