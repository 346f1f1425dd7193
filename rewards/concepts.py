"""Concept extraction for the rule-based CESAR rewards.

C(text) is a set of normalised content words:

1. case-fold, split into runs of letters/digits (Unicode-aware: ``[^\\W_]+``);
2. drop English function words and task boilerplate (``STOPWORDS``: articles, pronouns, auxiliaries, prepositions,
   hedges such as "maybe", and words every audio question shares such as "audio", "clip", "option", "answer");
3. drop tokens shorter than 3 characters unless they are numbers ("3" and "10" are concepts; "it" is not);
4. light suffix stripping so that inflections meet: ``-ies -> -y``, ``-ing``, ``-ed`` (words of 6+ letters),
   ``-es`` after s/x/z/ch/sh, plural ``-s`` (not ``-ss``). "barking", "barked", "barks" all become "bark".

overlap(x, y) = |C(x) ∩ C(y)| / max(|C(x)|, |C(y)|), and 0 when both are empty.

This is ours: the CESAR paper does not publish its extractor. It is English-oriented; scripts written without
spaces (Chinese, Japanese) give one concept per run of characters, so the overlap is coarse there.
"""

from __future__ import annotations

import re
from functools import lru_cache

STOPWORDS = frozenset(
    """
    a an the this that these those there here it its itself they them their theirs he him his she her hers we us our
    you your yours i me my mine one ones some any all each every both either neither no not nor none only own same so
    such than too very can could may might must shall should will would do does did done doing be is am are was were
    been being have has had having get gets got and or but if then else when while where which who whom whose what
    why how because since as until of at by for with about against between into through during before after above
    below to from up down in out on off over under again further once also just more most other another few many
    much lot lots like likely unlikely seems seem seemed maybe perhaps probably possibly think thinks thought let
    lets say says said well now first second third next finally therefore thus hence however although though yet
    still even really actually indeed based given hear heard hearing listen listening audio clip clips
    recording recordings answer answers question questions option options choice choices following correct
    """.split()
)

_TOKEN = re.compile(r"[^\W_]+")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 5 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 4 and word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def concepts(text: str) -> set[str]:
    """C(text): see the module docstring. ``concepts("Two dogs are barking")`` is ``{"two", "dog", "bark"}``."""
    out = set()
    for token in _TOKEN.findall(text.casefold()):
        if token in STOPWORDS or (len(token) < 3 and not token.isdigit()):
            continue
        out.add(_stem(token))
    return out


def overlap(x: set[str], y: set[str]) -> float:
    """|x ∩ y| / max(|x|, |y|); 0.0 when both are empty."""
    denominator = max(len(x), len(y))
    return len(x & y) / denominator if denominator else 0.0
