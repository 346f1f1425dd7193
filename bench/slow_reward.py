"""A reward plugin standing in for an LLM judge's latency in ``bench_overlap.py``: each batch waits
``BENCH_REWARD_LATENCY_S`` seconds (a judge's reply time: the process waits, it does not compute), then scores each
completion by a bit of its text's CRC-32, so groups have reward variance and every step updates the weights."""

import os
import time
import zlib


def judge_like(completions, samples, context):
    time.sleep(float(os.environ.get("BENCH_REWARD_LATENCY_S", "0")))
    return [float(zlib.crc32(text.encode("utf-8")) % 2) for text in completions]


judge_like.batched = True
