"""Table tests: the rule-based reasoning rewards (consistency_rule, consistency_cesar, thinking_rule, overthinking,
keywords_rule, has_reasoning)."""

import pytest

from rewards import get_reward
from rewards.concepts import concepts, overlap

CHOICES = {"question": "Who is speaking?", "choices": ["Man", "Woman", "Child"], "answer": "Woman"}


def score(name, completion, sample=None, **options):
    return get_reward(name).fn(completion, sample if sample is not None else CHOICES, **options)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>The voice is high, so it is a woman.</think><answer>Woman</answer>", 1.0),
        ("<think>The voice is high, so it is a woman.</think><answer>B</answer>", 1.0),  # letter answer
        ("<think>Not a man; a woman.</think><answer>(B) Woman</answer>", 1.0),
        ("<think>Could be a woman, but it is deep: a man.</think><answer>Woman</answer>", 0.0),
        ("<think>I pick option B.</think><answer>Woman</answer>", 1.0),  # letter reference in the reasoning
        ("<think>Between (A) and (B), I choose (A).</think><answer>Woman</answer>", 0.0),
        ("<think>The voice is high.</think><answer>Woman</answer>", 0.0),  # no choice named in reasoning
        ("<think>a woman</think><answer>a woman or a man</answer>", 0.0),  # answer names no single choice
        ("<think>a woman</think><answer></answer>", 0.0),  # empty answer
        ("<think>a woman speaking", 0.0),  # truncated
        ("<answer>Woman</answer>", None),  # no reasoning: not applicable
        ("<think>  </think><answer>Woman</answer>", None),  # blank reasoning
        ("<think>WOMAN!</think><answer>woman</answer>", 1.0),
        ("<think>a</think><think>so: woman</think><answer>Woman</answer>", 1.0),  # duplicated think sections
    ],
)
def test_consistency_rule(completion, expected):
    assert score("consistency_rule", completion) == expected


def test_consistency_rule_longest_choice_wins_at_same_end():
    sample = {"choices": ["dog", "barking dog", "cat"]}
    assert score("consistency_rule", "<think>a barking dog</think><answer>barking dog</answer>", sample) == 1.0
    assert score("consistency_rule", "<think>a barking dog</think><answer>dog</answer>", sample) == 0.0


def test_consistency_rule_open_question_and_prefill():
    sample = {"question": "How many beeps?", "answer": "3"}
    assert score("consistency_rule", "<think>I count 3 beeps</think><answer>3</answer>", sample) == 1.0
    assert score("consistency_rule", "<think>I count 4 beeps</think><answer>3</answer>", sample) == 0.0
    assert score("consistency_rule", "so it is a woman</think><answer>Woman</answer>", think_prefilled=True) == 1.0
    assert score("consistency_rule", "so it is a woman</think><answer>Woman</answer>") is None


def test_concepts_and_overlap():
    assert concepts("Two dogs are barking loudly") == {"two", "dog", "bark", "loudly"}
    assert concepts("The dog barked; it barks.") == {"dog", "bark"}
    assert concepts("I think it is 3") == {"3"}
    assert overlap({"a", "b"}, {"b", "c", "d"}) == pytest.approx(1 / 3)
    assert overlap(set(), set()) == 0.0


@pytest.mark.parametrize(
    ("completion", "sample", "expected"),
    [
        # C(think) = {two, dog, bark, loudly}, C(answer) = {dog, bark}: 2 / 4; no question
        ("<think>Two dogs are barking loudly</think><answer>dog barking</answer>", {}, 0.5),
        # with a question: C(q) = {dog, bark} ('how', 'many' are stop words) -> 2/4; mean(0.5, 0.5)
        ("<think>Two dogs are barking loudly</think><answer>dog barking</answer>", {"question": "How many dogs bark?"},
         0.5),
        ("<think>Two dogs are barking loudly</think><answer>cat</answer>", {}, 0.0),
        ("<think>dog</think><answer>B</answer>", {"choices": ["cat", "dog"]}, 1.0),  # letter -> choice text
        ("<answer>dog</answer>", {}, None),
        ("<think>dog", {}, 0.0),
    ],
)  # fmt: skip
def test_consistency_cesar(completion, sample, expected):
    value = score("consistency_cesar", completion, sample)
    assert value == (None if expected is None else pytest.approx(expected))


def test_consistency_cesar_sum_aggregate():
    c = "<think>Two dogs are barking loudly</think><answer>dog barking</answer>"
    assert score("consistency_cesar", c, {"question": "How many dogs bark?"}, aggregate="sum") == pytest.approx(1.0)


WORDS40 = " ".join(f"word{i}" for i in range(40))
LOOP = "The pitch of the voice rises at the end. " * 5


@pytest.mark.parametrize(
    ("think", "options", "expected"),
    [
        (WORDS40, {}, 1.0),
        ("too short to count", {}, 0.8),  # fails min_words only
        (LOOP, {}, 0.6),  # trigram loop and repeated sentence
        (" ".join(f"w{i}" for i in range(400)), {}, 0.8),  # too long
        (WORDS40 + " very very very very", {}, 0.8),  # stutter
        (WORDS40, {"min_words": 50}, 0.8),
        ("猫" * 30, {}, 0.8),  # one "word" (no spaces): fails min_words only
    ],
)
def test_thinking_rule(think, options, expected):
    value = score("thinking_rule", f"<think>{think}</think><answer>x</answer>", {}, **options)
    assert value == expected
    assert round(value * 5) == pytest.approx(value * 5)  # on the 0.2 grid


def test_thinking_rule_none_and_truncated():
    assert score("thinking_rule", "<answer>x</answer>", {}) is None
    assert score("thinking_rule", "<think></think><answer>x</answer>", {}) is None
    assert score("thinking_rule", "<think>" + "loop " * 10000, {}) == 0.0
    with pytest.raises(ValueError, match="min_words"):
        get_reward("thinking_rule").validate({"min_words": 500, "max_words": 100})


@pytest.mark.parametrize(
    ("completion", "options", "expected"),
    [
        ("<think>" + "w " * 25 + "</think><answer>x</answer>", {}, 0.75),
        ("<think>" + "w " * 25 + "</think><answer>x</answer>", {"max_words": 50}, 0.5),
        ("<think>" + "w " * 250 + "</think><answer>x</answer>", {}, 0.0),  # clipped
        ("<think>w</think><answer>x</answer>", {}, 0.99),
        ("<answer>x</answer>", {}, None),
        ("<think>w w w", {}, 0.0),
    ],
)
def test_overthinking(completion, options, expected):
    value = score("overthinking", completion, {}, **options)
    assert value == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("think", "options", "expected"),
    [
        ("First, the pitch rises, so it is a question.", {}, 0.75),  # structure, causal, acoustic
        ("However the tempo is fast because of the drums; first I check.", {}, 1.0),
        ("It is a dog.", {}, 0.0),
        ("Rule out the cat.", {}, 0.25),  # multi-word keyword
        ("It is loud.", {"keywords": {"acoustic": ["loud"], "other": ["zebra"]}}, 0.5),
    ],
)
def test_keywords_rule(think, options, expected):
    assert score("keywords_rule", f"<think>{think}</think><answer>x</answer>", {}, **options) == expected


def test_keywords_rule_validation():
    with pytest.raises(ValueError, match="keywords"):
        get_reward("keywords_rule").validate({"keywords": {"a": []}})


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("<think> </think><answer>b</answer>", 0.0),
        ("<answer>b</answer>", 0.0),
        ("<think>a", 0.0),
    ],
)
def test_has_reasoning(completion, expected):
    assert score("has_reasoning", completion, {}) == expected
