"""Plugins for the failure tests, referenced by import path (``helpers.failing_rewards:...``) as a user's would be.

* ``by_row``: a batched reward worth ``i`` on batch row i, and ``RewardFailure(reason)`` on the rows listed in
  ``fail_rows`` (a judge that timed out on exactly those completions, deterministically);
* ``down_after``: a batched reward worth ``i`` on batch row i for its first ``calls`` calls in this process, then
  ``RewardFailure`` on every row (a judge that went down for good after a few steps);
* ``always_seven``: a user combiner that ignores its inputs, so any None in R_total comes from the rubric.
"""

from rewards import RewardFailure


def by_row(completions, samples, context, fail_rows=(), reason="stub judge timed out"):
    return [RewardFailure(reason) if i in fail_rows else float(i) for i in range(len(completions))]


by_row.batched = True


_calls = {"down_after": 0}


def down_after(completions, samples, context, calls=2, reason="stub judge went down"):
    _calls["down_after"] += 1
    if _calls["down_after"] > calls:
        return [RewardFailure(reason)] * len(completions)
    return [float(i) for i in range(len(completions))]


down_after.batched = True


def always_seven(terms, weights, context):
    return [7.0] * len(next(iter(terms.values())))
