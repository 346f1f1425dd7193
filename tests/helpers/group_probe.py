"""A group-level reward plugin for the multi-process tests: 1.0 for the longest completion of each group.

Every call appends what it saw (process, rank, the rows' prompt ids) to the JSONL file named by
``GROUP_PROBE_LOG``, so a test can check that the rows of one prompt reached the reward together; every process that
imported it records at exit whether its process group was still alive (``GROUP_PROBE_LOG`` + ``.exit``).
"""

import atexit
import json
import os

import torch.distributed as dist

from rewards import register_reward


@atexit.register
def _record_process_group_at_exit() -> None:
    """Appends to ``GROUP_PROBE_LOG`` + ``.exit`` whether this process still held a process group when it exited
    (atexit runs after the command returned, before the interpreter's finalization)."""
    log = os.environ.get("GROUP_PROBE_LOG")
    if log:
        with open(f"{log}.exit", "a", encoding="utf-8") as fh:
            record = {"rank": int(os.environ.get("RANK", "0")), "group_alive": dist.is_initialized()}
            fh.write(json.dumps(record) + "\n")


@register_reward("test_longest_in_group", group_level=True)
def longest_in_group(completions, samples, context):
    size = context.group_size
    with open(os.environ["GROUP_PROBE_LOG"], "a", encoding="utf-8") as fh:
        record = {"pid": os.getpid(), "rank": int(os.environ.get("RANK", "0")), "ids": [s["id"] for s in samples]}
        fh.write(json.dumps(record) + "\n")
    values = []
    for start in range(0, len(completions), size):
        group = completions[start : start + size]
        longest = max(len(c) for c in group)
        values.extend(1.0 if len(c) == longest else 0.0 for c in group)
    return values
