"""keywords_rule in [0, 1]: RULE-BASED share of reasoning-pattern keyword categories present in the reasoning.

    r = |{categories k : some keyword of k occurs in think}| / |categories|

Default categories (ours; CESAR rewards "structured analytical patterns, causal reasoning and domain-knowledge
integration" with keyword checks, but does not publish its lists):

* ``structure``: first, second, then, next, finally, step, overall, to summarize;
* ``causal``: because, since, therefore, thus, hence, so, as a result, due to, which means, indicates, suggests;
* ``acoustic``: audio-domain vocabulary (pitch, tempo, rhythm, timbre, frequency, loudness, melody, harmony, chord,
  beat, tone, intonation, accent, voice, speaker, instrument, vocals, reverb, echo, noise, volume, ...);
* ``verification``: however, but, although, rule out, eliminate, not, instead, compare, check, verify, unlike.

Keywords match case-insensitively on word boundaries; multi-word keywords match across any whitespace. Pass
``keywords: {category: [words...]}`` to replace the lists.

None when there is no reasoning (no or blank ``<think>`` section); 0.0 when the ``<think>`` was never closed.

Example: "First, the pitch rises, so it is a question." hits structure, causal and acoustic: r = 3 / 4 = 0.75.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from rewards import _checks
from rewards.answer_span import no_reasoning_verdict, parse_completion
from rewards.registry import register_reward

DEFAULT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "structure": ("first", "firstly", "second", "secondly", "then", "next", "finally", "step", "overall",
                  "to summarize", "in summary"),
    "causal": ("because", "since", "therefore", "thus", "hence", "so", "as a result", "due to", "which means",
               "indicates", "indicating", "suggests", "suggesting", "implies"),
    "acoustic": ("pitch", "tempo", "rhythm", "timbre", "frequency", "frequencies", "loudness", "loud", "quiet",
                 "melody", "harmony", "chord", "chords", "beat", "beats", "tone", "tones", "intonation", "accent",
                 "voice", "voices", "speaker", "speakers", "instrument", "instruments", "vocal", "vocals", "reverb",
                 "echo", "noise", "volume", "bass", "treble", "spectral", "hz", "db", "decibel", "decibels", "tonal",
                 "prosody", "vibrato", "staccato", "crescendo", "key", "major", "minor", "bpm"),
    "verification": ("however", "but", "although", "rule out", "ruled out", "eliminate", "not", "instead",
                     "compare", "comparing", "check", "verify", "unlike", "whereas"),
}  # fmt: skip


@lru_cache(maxsize=64)
def _compile(groups: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[re.Pattern[str], ...]:
    patterns = []
    for _, words in groups:
        escaped = (r"\s+".join(map(re.escape, w.casefold().split())) for w in words)
        alternatives = sorted(escaped, key=len, reverse=True)  # longest first: "rule out" before "rule"
        patterns.append(re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)"))
    return tuple(patterns)


def _groups(keywords: Mapping[str, Sequence[str]] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    source = DEFAULT_KEYWORDS if keywords is None else keywords
    return tuple((str(k), tuple(str(w) for w in v)) for k, v in source.items())


def validate(options: Mapping[str, Any]) -> None:
    _checks.boolean(options, "think_prefilled")
    keywords = options.get("keywords")
    if keywords is None:
        return
    if not isinstance(keywords, Mapping) or not keywords:
        raise ValueError("option 'keywords' must be a non-empty mapping {category: [keyword, ...]}")
    for category, words in keywords.items():
        if isinstance(words, str) or not isinstance(words, Sequence) or not [w for w in words if str(w).split()]:
            raise ValueError(f"keywords category {category!r} must be a non-empty list of keywords")


@register_reward("keywords_rule", validate=validate)
def score(
    completion: str,
    sample: Mapping[str, Any],
    think_prefilled: bool = False,
    keywords: Mapping[str, Sequence[str]] | None = None,
) -> float | None:
    parsed = parse_completion(completion, think_prefilled)
    if not parsed.thinks:
        return no_reasoning_verdict(parsed)
    text = (parsed.think or "").casefold()
    patterns = _compile(_groups(keywords))
    return sum(1 for p in patterns if p.search(text)) / len(patterns)
