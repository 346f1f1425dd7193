"""A reward plugin for the dynamic-sampling tests: some groups informative, some not, whatever the model samples.

``half_informative`` is worth 1.0 on every completion of a prompt whose id ends in an even digit (a group with no
reward variance), and a bit of the completion text's CRC-32 on the others (two values, so such a group has variance
unless all G completions hash alike). Deterministic given the completions, like a rule-based reward.
"""

import zlib


def half_informative(completions, samples, context):
    values = []
    for text, sample in zip(completions, samples, strict=True):
        if int(str(sample["id"])[-1]) % 2 == 0:
            values.append(1.0)
        else:
            values.append(float(zlib.crc32(text.encode("utf-8")) % 2))
    return values


half_informative.batched = True
