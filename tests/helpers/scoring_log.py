"""A reward plugin that records where and when it scored: ``mixed_signal.half_informative``'s values, and one JSON
line per call appended to the file named by ``GRPO_AUDIO_SCORING_LOG``: the thread, the optimizer step of the
``RewardContext``, the completions and the values. The overlap tests read it to see which batches were scored in the
prefetch thread, and that each was scored once."""

import json
import os
import threading

from helpers.mixed_signal import half_informative


def logged_half_informative(completions, samples, context):
    values = half_informative(completions, samples, context)
    record = {
        "thread": threading.current_thread().name,
        "step": context.step,
        "completions": list(completions),
        "values": values,
    }
    with open(os.environ["GRPO_AUDIO_SCORING_LOG"], "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
    return values


logged_half_informative.batched = True
