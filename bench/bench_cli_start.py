"""How long the CLI takes to answer the commands that need no model: start-up time, not training time.

    python bench/bench_cli_start.py [--repeat 5]

Runs each command ``--repeat`` times as a fresh process (``grpo-audio`` from this environment) and prints the
median wall seconds: ``--help``, ``--version``, an argument error, and the subcommands' ``--help``. The top-level
ones import no heavy library (``tests/test_cli.py`` checks that torch, transformers, trl and vllm stay unimported);
a subcommand's help still imports what its parser needs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["--help"],
    ["--version"],
    ["train", "--no-such-flag"],
    ["rewards", "score", "--help"],
    ["eval", "--help"],
]


def median_seconds(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    exe = shutil.which("grpo-audio") or os.path.join(os.path.dirname(sys.executable), "grpo-audio")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs; median of {args.repeat} runs\n")
    print("| command | median s |")
    print("| --- | ---: |")
    for command in COMMANDS:
        print(f"| `grpo-audio {' '.join(command)}` | {median_seconds([exe, *command], args.repeat):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
