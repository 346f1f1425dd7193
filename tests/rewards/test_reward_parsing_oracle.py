"""The linear scanners agree with the regex definitions they replace, on random tag soup."""

import random
import re

from rewards import get_reward
from rewards.answer_span import tag_pairs

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "a", "Man", " ", "\n", "<", ">", "think", "/"]
TEMPERED = {
    "think": re.compile(r"<think>((?:(?!<think>).)*?)</think>", re.DOTALL),
    "answer": re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL),
}
STRICT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
BARE = re.compile(r"\s*<answer>.*?</answer>\s*", re.DOTALL)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def soup(rng):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))


def test_tag_pairs_match_the_tempered_regex():
    rng = random.Random(0)
    for _ in range(20000):
        text = soup(rng)
        for tag, pattern in TEMPERED.items():
            assert tag_pairs(text, f"<{tag}>", f"</{tag}>") == pattern.findall(text), text


def test_strict_and_adaptive_match_the_regexes():
    fmt = get_reward("format").fn
    rng = random.Random(1)
    for _ in range(20000):
        text = soup(rng)
        counts = tuple(text.count(t) for t in TAGS)
        strict = counts == (1, 1, 1, 1) and STRICT.fullmatch(text) is not None
        bare = counts == (0, 0, 1, 1) and BARE.fullmatch(text) is not None
        assert fmt(text, {}, mode="strict") == float(strict), text
        assert fmt(text, {}, mode="adaptive") == float(strict or bare), text
