"""LLM-judge rewards (``consistency``, ``thinking``) and the client, cache, parser and counters behind them.

No torch; the client is the ``openai`` package's. Importing this package registers the two judge rewards. See
``rewards.judge.scorers`` for the reward definitions and options (structured verdicts included),
``rewards.judge.client`` for the request behaviour (concurrency, timeouts, retries, structured output),
``rewards.judge.verdicts`` for the reply contract, ``rewards.judge.cache`` for the verdict cache.
"""

from rewards.judge.cache import JudgeCache
from rewards.judge.client import JudgeClient, JudgeConfig, JudgeRequestError
from rewards.judge.scorers import Judge, JudgeError, get_judge, judge_stats, reset_judges
from rewards.judge.stats import JudgeStats
from rewards.judge.verdicts import MalformedVerdictError, parse_consistency, parse_thinking

__all__ = [
    "Judge",
    "JudgeCache",
    "JudgeClient",
    "JudgeConfig",
    "JudgeError",
    "JudgeRequestError",
    "JudgeStats",
    "MalformedVerdictError",
    "get_judge",
    "judge_stats",
    "parse_consistency",
    "parse_thinking",
    "reset_judges",
]
