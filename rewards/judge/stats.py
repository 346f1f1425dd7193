"""Counters of one judge configuration, readable by the trainer (``Rubric.metrics()``) and the scoring CLI.

All counts are cumulative since the judge was first used in this process.

* ``rows``: rows that needed a verdict (reasoning present); ``not_applicable``: rows without reasoning (None, no
  request); ``truncated``: rows whose ``<think>`` never closed (scored 0, no request); ``empty_answer``
  (consistency only): reasoning but no answer (scored 0, no request);
* ``cache_hits``: verdicts served from the cache; ``deduplicated``: rows that shared a request with an identical
  prompt in the same batch;
* ``requests``: HTTP attempts sent (first tries and retries); ``retries``: attempts after the first;
  ``timeouts``, ``http_errors`` (non-2xx), ``connection_errors``, ``bad_responses`` (2xx that is not a chat
  completion): failed attempts by cause;
* ``malformed``: replies the verdict parser rejected;
* ``failures``: rows left without a verdict (``RewardFailure``: the row is unscored; or an error under
  ``on_failure: error``). The probe before training is not counted here;
* ``latency_s``: summed wall time of the HTTP attempts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class JudgeStats:
    rows: int = 0
    not_applicable: int = 0
    truncated: int = 0
    empty_answer: int = 0
    cache_hits: int = 0
    deduplicated: int = 0
    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    http_errors: int = 0
    connection_errors: int = 0
    bad_responses: int = 0
    malformed: int = 0
    failures: int = 0
    latency_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, type(getattr(self, f.name))())
