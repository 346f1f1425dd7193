"""Table tests: accuracy (every rule), answer extraction, and MMAU's documented examples."""

import pytest

from rewards import RewardContext, get_reward
from rewards.answer_span import extract_answer, extract_think, parse_completion
from rewards.matching import find_numbers, mmau_match, mmsu_letter, resolve_choice

accuracy = get_reward("accuracy").fn
MMAU = {"id": "m1", "answer": "Man", "choices": ["Man", "Woman", "Child"]}


# MMAU's documented examples, on the raw prediction string (the official script sees raw text).
@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Man", True),
        ("(A) Man", True),
        ("The answer is Man", True),
        ("<answer>Man</answer>", True),
        ("man.", True),
        ("A", False),  # a bare letter is wrong
        ("It is a man, not a woman", False),  # a wrong choice's token is present
        ("", False),
        ("Woman", False),
    ],
)
def test_mmau_documented_examples(prediction, expected):
    assert mmau_match(prediction, "Man", MMAU["choices"]) is expected


def test_mmau_reasoning_left_in_is_usually_wrong():
    prediction = "A man's voice is deeper than a woman's or a child's, so: Man"
    assert mmau_match(prediction, "Man", MMAU["choices"]) is False
    # scoring the extracted span fixes it
    assert accuracy(f"<think>{prediction}</think><answer>Man</answer>", MMAU) == 1.0


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>deep voice</think><answer>Man</answer>", 1.0),
        ("<think>deep voice</think><answer>(A) Man</answer>", 1.0),
        ("<think>deep voice</think><answer>The answer is Man.</answer>", 1.0),  # extra words
        ("<think>deep voice</think><answer>A</answer>", 0.0),  # letter vs option text: MMAU rule says wrong
        ("<think>deep voice</think><answer>Woman</answer>", 0.0),
        ("<think>it is a man, not a woman</think><answer>Man</answer>", 1.0),  # reasoning is not scored
        ("<think>x</think><answer>Woman</answer><answer>Man</answer>", 1.0),  # duplicated: the last one counts
        ("<think>x</think><answer>Man</answer><answer>Woman</answer>", 0.0),
        ("<think>x</think><answer>Woman <answer>Man</answer></answer>", 1.0),  # nested: innermost
        ("<think>x</think>Man", 0.0),  # missing answer tags: no answer given (training reads the span only)
        ("Man", 0.0),  # no tags at all: no answer given
        ("<think>a long story about a man and a woman", 0.0),  # truncated: no answer
        ("<answer>Man", 0.0),  # unclosed answer tag: no answer
        ("<think></think><answer>Man</answer>", 1.0),  # empty think
        ("<answer>   Man \n</answer>", 1.0),
        ("", 0.0),
    ],
)
def test_accuracy_mmau_table(completion, expected):
    assert accuracy(completion, MMAU) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>x</think>Man", 1.0),  # missing answer tags: text after </think>
        ("Man", 1.0),  # no tags at all: whole completion
        ("<think>a long story about a man and a woman", 0.0),  # truncated: reasoning pollutes the answer
        ("<think>x</think><answer>Woman</answer> Man", 0.0),  # a span wins over the text around it
    ],
)
def test_accuracy_tag_or_text_falls_back_to_the_text(completion, expected):
    assert accuracy(completion, MMAU, answer_source="tag_or_text") == expected


PITCH = {"id": "p1", "answer": "high", "choices": ["high", "low"]}


def test_a_tagless_right_answer_earns_nothing_in_training_but_counts_in_evaluation():
    from grpo_audio.evaluation.scoring import score_mmau

    tagless = "The answer is high."
    assert accuracy(tagless, PITCH) == 0.0  # the training default reads the <answer> span only
    assert accuracy(tagless, PITCH, answer_source="tag") == 0.0
    assert accuracy(tagless, PITCH, answer_source="tag_or_text") == 1.0  # the fallback, when a recipe names it
    assert score_mmau(tagless, "high", PITCH["choices"]).correct  # evaluation: the official MMAU rule
    assert accuracy("<answer>high</answer>", PITCH) == 1.0
    assert accuracy(tagless, {"answer": None, "choices": ["high", "low"]}) is None  # no gold: not applicable


@pytest.mark.parametrize(
    ("rule", "answer"), [("mmau", "2"), ("exact", "2"), ("option", "2"), ("mmsu", "B"), ("numeric", "2")]
)
def test_every_rule_reads_the_span_only_by_default(rule, answer):
    sample = {"answer": "2", "choices": ["1", "2"]}
    assert accuracy(answer, sample, rule=rule) == 0.0
    assert accuracy(answer, sample, rule=rule, answer_source="tag_or_text") == 1.0
    assert accuracy(f"<answer>{answer}</answer>", sample, rule=rule) == 1.0


def test_answer_source_is_validated():
    with pytest.raises(ValueError, match="answer_source"):
        get_reward("accuracy").validate({"answer_source": "text"})
    get_reward("accuracy").validate({"answer_source": "tag_or_text"})


def test_accuracy_prefilled_think_completion():
    # the template emitted <think>; the completion starts inside the reasoning
    assert accuracy("deep voice, so Man.</think><answer>Man</answer>", MMAU) == 1.0


def test_accuracy_very_long_output():
    completion = "<think>" + "the voice is low. " * 20000 + "</think><answer>Man</answer>"
    assert accuracy(completion, MMAU) == 1.0


def test_accuracy_unicode():
    sample = {"answer": "Café au lait", "choices": ["Café au lait", "Thé vert", "音乐"]}
    assert accuracy("<think>ça sonne…</think><answer>café au lait</answer>", sample) == 1.0
    assert accuracy("<answer>音乐</answer>", {"answer": "音乐", "choices": ["音乐", "说话"]}) == 1.0
    assert accuracy("<answer>说话</answer>", {"answer": "音乐", "choices": ["音乐", "说话"]}) == 0.0
    assert accuracy("<answer>CAFÉ AU LAIT</answer>", sample, rule="exact") == 1.0


@pytest.mark.parametrize("answer", [None, "", "   "])
def test_missing_gold_is_none_not_zero(answer):
    assert accuracy("<answer>Man</answer>", {"answer": answer, "choices": ["Man"]}) is None
    assert accuracy("<answer>Man</answer>", {"choices": ["Man"]}, rule="option") is None


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", 1.0), ("(B)", 1.0), ("B.", 1.0), ("b", 1.0), ("[B]", 1.0), ("B) Woman", 1.0), ("(B) Woman", 1.0),
        ("option 2", 1.0), ("Option (B)", 1.0), ("The answer is B", 1.0), ("Answer: (B)", 1.0), ("Woman", 1.0),
        ("woman", 1.0), ("A woman", 1.0), ("The answer is woman", 1.0),
        ("A", 0.0), ("(A) Man", 0.0), ("Man", 0.0), ("E", 0.0), ("option 7", 0.0),
        ("B. Man", 0.0),  # letter and text name different choices: contradictory
        ("woman or man", 0.0),  # names two choices
        ("", 0.0),
    ],
)  # fmt: skip
def test_accuracy_option_rule(prediction, expected):
    sample = {"answer": "Woman", "choices": ["Man", "Woman", "Child"]}
    assert accuracy(f"<think>t</think><answer>{prediction}</answer>", sample, rule="option") == expected


def test_option_rule_choices_that_look_like_numbers_or_letters():
    assert resolve_choice("2", ["1", "2", "3"]) == 1  # choice text wins over an index reading
    assert resolve_choice("A", ["B", "A"]) == 1  # choice text wins over a letter reading
    assert resolve_choice("option 2", ["1", "2", "3"]) == 1


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", 1.0), ("B.", 1.0), ("(B)", 1.0), ("B\n", 1.0), ("\nB", 1.0), ("B: Woman", 1.0), ("The answer: B.", 1.0),
        ("A", 0.0), ("b", 0.0), ("Woman", 0.0),  # official rule: first char 'W', second-to-last 'a'
        ("E", 0.0), ("", 0.0),
    ],
)  # fmt: skip
def test_accuracy_mmsu_rule(prediction, expected):
    sample = {"answer": "Woman", "choices": ["Man", "Woman", "Child", "Robot"]}
    assert accuracy(f"<answer>{prediction}</answer>", sample, rule="mmsu") == expected


def test_mmsu_letter_order():
    assert mmsu_letter("A and then (C)", 4) == 0  # the first character wins
    assert mmsu_letter("I pick (C)", 4) == 2
    assert mmsu_letter("I pick C", 4) is None  # second-to-last is a space: dropped (we score it wrong)


@pytest.mark.parametrize(
    ("answer", "index_base", "prediction", "expected"),
    [
        (1, 0, "Woman", 1.0),  # AVQA-style integer index
        (2, 1, "Woman", 1.0),
        (0, 0, "Woman", 0.0),
        ("B", 0, "Woman", 1.0),  # letter gold
        ("B", 0, "B", 1.0),
    ],
)
def test_gold_index_and_letter(answer, index_base, prediction, expected):
    sample = {"answer": answer, "choices": ["Man", "Woman", "Child"]}
    rule = "option"
    assert accuracy(f"<answer>{prediction}</answer>", sample, rule=rule, index_base=index_base) == expected


def test_gold_index_out_of_range_raises_naming_the_row():
    with pytest.raises(ValueError, match="sample id 'q7'.*out of range"):
        accuracy("<answer>Man</answer>", {"id": "q7", "answer": 5, "choices": ["Man", "Woman"]})


def test_option_rule_without_choices_raises():
    with pytest.raises(ValueError, match="needs 'choices'"):
        accuracy("<answer>B</answer>", {"answer": "x"}, rule="option")


@pytest.mark.parametrize(
    ("prediction", "gold", "options", "expected"),
    [
        ("3", "3", {}, 1.0),
        ("three", "3", {}, 1.0),
        ("I hear 3 beeps", "3", {}, 1.0),
        ("2 dogs barked 3 times", "3", {}, 1.0),  # the last number counts
        ("3 times, not 2", "3", {}, 0.0),
        ("twenty-one", "21", {}, 1.0),
        ("1,000", "1000", {}, 1.0),
        ("3.04", "3", {"tolerance": 0.05}, 1.0),
        ("3.2", "3", {"tolerance": 0.05}, 0.0),
        ("105", "100", {"tolerance": 0.05, "relative": True}, 1.0),
        ("106", "100", {"tolerance": 0.05, "relative": True}, 0.0),
        ("0.3", "0.30000000000000004", {}, 1.0),
        ("no idea", "3", {}, 0.0),
        ("-2", "-2", {}, 1.0),
    ],
)
def test_accuracy_numeric_rule(prediction, gold, options, expected):
    assert accuracy(f"<answer>{prediction}</answer>", {"answer": gold}, rule="numeric", **options) == expected


def test_numeric_int_gold_without_choices_and_non_numeric_gold():
    assert accuracy("<answer>4</answer>", {"answer": 4}, rule="numeric") == 1.0
    with pytest.raises(ValueError, match="no number"):
        accuracy("<answer>4</answer>", {"id": 1, "answer": "many"}, rule="numeric")


def test_find_numbers():
    assert find_numbers("twenty-one dogs, 1,000.5 cats, three birds, -2e3, .5") == [21, 1000.5, 3, -2000, 0.5]


def test_exact_rule():
    assert accuracy("<answer> high pitch. </answer>", {"answer": "High pitch"}, rule="exact") == 1.0
    assert accuracy("<answer>high</answer>", {"answer": "High pitch"}, rule="exact") == 0.0


def test_unknown_rule_is_a_validation_error():
    reward = get_reward("accuracy")
    with pytest.raises(ValueError, match="rule"):
        reward.validate({"rule": "fuzzy"})
    with pytest.raises(ValueError, match="tolerance"):
        reward.validate({"tolerance": -1})


def test_score_batch_runs_rows():
    values = get_reward("accuracy").score_batch(
        ["<answer>Man</answer>", "<answer>Woman</answer>", "x", "Man"],
        [MMAU, MMAU, {"answer": None}, MMAU],
        RewardContext(),
    )
    assert values == [1.0, 0.0, None, 0.0]


# --- answer span and think extraction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "think", "thinks", "think_open"),
    [
        ("<think>a</think><answer>b</answer>", "b", "a", True, False),
        ("<think> </think><answer>b</answer>", "b", "", False, False),  # blank think = no thinking
        ("<answer>b</answer>", "b", None, False, False),
        ("<think>a<answer>b", "a b", None, False, True),  # truncated
        ("<think>a</think><think>c</think><answer>b</answer>", "b", "a\nc", True, False),  # duplicated
        ("<think><think>a</think></think><answer>b</answer>", "b", "a", True, False),  # nested
        ("x <think>a</think> y <answer> b </answer> z", "b", "a", True, False),
    ],
)
def test_parse_completion(completion, answer, think, thinks, think_open):
    parsed = parse_completion(completion)
    assert (parsed.answer, parsed.think, parsed.thinks, parsed.think_open) == (answer, think, thinks, think_open)


def test_prefilled_think_is_not_doubled():
    assert extract_think("reasoning</think><answer>x</answer>", think_prefilled=True) == "reasoning"
    assert extract_think("<think>reasoning</think><answer>x</answer>", think_prefilled=True) == "reasoning"
    assert extract_think("reasoning</think><answer>x</answer>") is None
    assert extract_answer("reasoning</think><answer>x</answer>") == "x"
