"""Combiner and rubric tests with hand-computed numbers."""

import math

import pytest

from rewards import (
    RewardContext,
    RewardFailure,
    Rubric,
    TermSpec,
    UnscoredRowsError,
    register_reward,
    registered_names,
    rubric_from_config,
)
from rewards.combiners import adaptive_accuracy, get_combiner, weighted_sum

if "test_field" not in registered_names():

    @register_reward("test_field")
    def field_value(completion, sample, field="v"):
        """Returns sample[field] (None when missing): lets a test feed exact term values."""
        return sample.get(field)


def fixed(key, **options):
    return TermSpec("test_field", options={"field": key, **options}, label=key)


def test_weighted_sum_by_hand():
    terms = {"acc": [1.0, 0.0, None], "fmt": [1.0, None, None]}
    assert weighted_sum(terms, {"acc": 2.0, "fmt": 1.0}, RewardContext()) == [3.0, 0.0, None]
    assert weighted_sum(terms, {"acc": 2.0, "fmt": 1.0}, RewardContext(), options={"none": "propagate"}) == [
        3.0, None, None,
    ]  # fmt: skip
    # a None term with weight 0 does not make the row unscorable
    assert weighted_sum(terms, {"acc": 2.0, "fmt": 0.0}, RewardContext(), options={"none": "propagate"}) == [
        2.0, 0.0, None,
    ]  # fmt: skip


def test_sum_rubric_logs_weighted_terms_and_weight_zero():
    rubric = Rubric([fixed("a"), TermSpec("test_field", 0.0, {"field": "b"}, label="b"), fixed("c")])
    breakdown = rubric.score(["x", "y"], [{"a": 1, "b": 5, "c": 0.5}, {"a": 0, "b": 5, "c": None}])
    assert breakdown.weights == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert breakdown.weighted == {"a": [1.0, 0.0], "b": [0.0, 0.0], "c": [0.5, None]}
    assert breakdown.total == [1.5, 0.0]


def test_paper_sum_with_real_rewards():
    rubric = Rubric(
        [TermSpec("accuracy"), TermSpec("format"), TermSpec("consistency_rule"), TermSpec("thinking_rule")]
    )
    sample = {"answer": "Woman", "choices": ["Man", "Woman"]}
    think = "The voice is high and soft, which rules out a man speaking in this short clip, so it is a woman."
    breakdown = rubric.score([f"<think>{think}</think><answer>Woman</answer>", "<answer>Man</answer>"], [sample] * 2)
    assert breakdown.terms["thinking_rule"] == [1.0, None]
    assert breakdown.total == [4.0, 0.0]


def test_audio_thinker_by_hand():
    # rows: think+correct, think+wrong, no-think+correct, no-think+wrong; share of thinkers 0.5; p = 0
    completions = ["<think>r</think><answer>a</answer>", "<think>r</think><answer>b</answer>",
                   "<answer>a</answer>", "<think> </think><answer>b</answer>"]  # fmt: skip
    samples = [
        {"acc": 1, "fmt": 1, "cons": 1, "thk": 0.8},
        {"acc": 0, "fmt": 1, "cons": 0, "thk": 0.4},
        {"acc": 1, "fmt": 1, "cons": None, "thk": None},
        {"acc": 0, "fmt": 1, "cons": None, "thk": None},
    ]
    rubric = Rubric(
        [fixed("acc"), fixed("fmt"), fixed("cons"), fixed("thk")],
        "audio_thinker",
        {"roles": {"accuracy": "acc", "format": "fmt", "consistency": "cons", "thinking": "thk"}},
    )
    breakdown = rubric.score(completions, samples, RewardContext(step=0, total_steps=10, group_size=4))
    g = math.exp(-0.5)  # lambda = 0.5, p = 0 -> g_think = g_nothink = e^-0.5
    expected = [
        g * 1.5 + 0.5 + 0.8,  # R_a = g, bonus 0.5 * R_c
        -(1 - g) * 1.0 + 0.5 + 0.4,
        2 * g * 1.5 + 0.5 + 0.6,  # no-think: R_c = 1, R_t = mean(0.8, 0.4)
        (-g - 2 * (1 - g)) * 1.5 + 0.5 + 0.6,
    ]
    assert breakdown.total == pytest.approx(expected)
    assert [round(x, 4) for x in expected] == [2.2098, 0.5065, 2.9196, -0.9902]
    assert breakdown.weights == {"acc": 1.0, "fmt": 0.5, "cons": 0.5, "thk": 1.0}
    for j in range(4):  # the logged weighted terms add up to R_total
        assert sum(breakdown.weighted[k][j] for k in breakdown.weighted) == pytest.approx(breakdown.total[j])
    assert breakdown.extra["audio_thinker/thinks"] == [1.0, 1.0, 0.0, 0.0]
    assert breakdown.extra["audio_thinker/thinking_used"] == pytest.approx([0.8, 0.4, 0.6, 0.6])
    assert breakdown.scalars["audio_thinker/think_share"] == 0.5
    assert breakdown.scalars["audio_thinker/g_think"] == pytest.approx(g)


def test_audio_thinker_end_of_training_base_values():
    assert [adaptive_accuracy(c, t, 1.0, 1.0) for t in (True, False) for c in (1, 0)] == [1, 0, 2, -1]
    # p = 1 makes g = 1 regardless of lambda
    rubric = Rubric(
        [TermSpec("accuracy"), TermSpec("format", options={"mode": "adaptive"}),
         TermSpec("consistency_rule", label="consistency"), TermSpec("thinking_rule", label="thinking", weight=0.0)],
        "audio_thinker",
    )  # fmt: skip
    sample = {"answer": "Woman", "choices": ["Man", "Woman"]}
    breakdown = rubric.score(
        ["<think>so: woman</think><answer>Woman</answer>", "<answer>Woman</answer>", "<answer>Man</answer>"],
        [sample] * 3,
        RewardContext(step=100, total_steps=100, group_size=3),
    )
    # think correct consistent: 1 * 1.5 + 0.5; no-think correct: 2 * 1.5 + 0.5; no-think wrong: -1 * 1.5 + 0.5
    assert breakdown.total == pytest.approx([2.0, 3.5, -1.0])


def test_audio_thinker_judge_failure_makes_row_unscorable():
    rubric = Rubric([fixed("accuracy"), fixed("format"), fixed("consistency"), fixed("thinking")], "audio_thinker")
    completions = ["<think>r</think><answer>a</answer>"] * 2
    samples = [{"accuracy": 1, "format": 1, "consistency": None, "thinking": 1},
               {"accuracy": 1, "format": 1, "consistency": 1, "thinking": 1}]  # fmt: skip
    total = rubric.score(completions, samples, RewardContext(step=1, total_steps=1)).total
    assert total == [None, 3.0]  # 1 * (1 + 0.5) + 0.5 + 1


def test_audio_thinker_requires_roles():
    with pytest.raises(ValueError, match=r"needs term\(s\) for role\(s\) \['consistency', 'thinking'\].*label"):
        Rubric([TermSpec("accuracy"), TermSpec("format")], "audio_thinker")
    with pytest.raises(ValueError, match="not a term key"):
        Rubric([TermSpec("accuracy")], "audio_thinker", {"roles": {"format": "fmt"}})
    with pytest.raises(ValueError, match="no option"):
        Rubric([TermSpec("accuracy")], "audio_thinker", {"weights": 1})


def test_audio_thinker_inherits_think_prefilled():
    terms = [TermSpec("accuracy"), TermSpec("format", options={"think_prefilled": True}),
             TermSpec("consistency_rule", label="consistency", options={"think_prefilled": True}),
             TermSpec("thinking_rule", label="thinking", options={"think_prefilled": True})]  # fmt: skip
    rubric = Rubric(terms, "audio_thinker")
    assert rubric.combiner_options["think_prefilled"] is True
    breakdown = rubric.score(["so: woman</think><answer>Woman</answer>"], [{"answer": "Woman"}])
    assert breakdown.extra["audio_thinker/thinks"] == [1.0]
    with pytest.raises(ValueError, match="disagrees"):
        Rubric(terms, "audio_thinker", {"think_prefilled": False})


def test_cesar_by_hand():
    rubric = Rubric(
        [fixed("accuracy"), fixed("format"), fixed("consistency"), fixed("keywords"), fixed("overthinking"),
         TermSpec("test_field", 0.5, {"field": "extra"}, label="extra")],
        "cesar",
    )  # fmt: skip
    row = {"accuracy": 1, "format": 1, "consistency": 0.5, "keywords": 0.75, "overthinking": 0.6, "extra": 2}
    breakdown = rubric.score(["x"], [row])
    assert breakdown.total == pytest.approx([5 + 1 + 0.5 + 0.75 + 0.6 + 1.0])
    assert breakdown.weights == {"accuracy": 5.0, "format": 1.0, "consistency": 1.0, "keywords": 1.0,
                                 "overthinking": 1.0, "extra": 0.5}  # fmt: skip
    assert breakdown.weighted["accuracy"] == [5.0]
    # recipe weights scale CESAR's coefficients
    doubled = Rubric([TermSpec("test_field", 2.0, {"field": "accuracy"}, label="accuracy")], "cesar")
    assert doubled.score(["x"], [row]).total == [10.0]


def test_cesar_with_rule_rewards():
    rubric = rubric_from_config(
        {
            "combiner": "cesar",
            "terms": [
                {"name": "accuracy"},
                {"name": "format"},
                {"name": "consistency_cesar", "label": "consistency"},
                {"name": "keywords_rule", "label": "keywords"},
                {"name": "overthinking", "options": {"max_words": 10}},
            ],
        }
    )
    completion = "<think>Two dogs are barking loudly</think><answer>dog barking</answer>"
    breakdown = rubric.score([completion], [{"answer": "dog barking"}])
    # 5 * 1 + 1 + 0.5 + keywords 0 (no category) + overthinking (1 - 5/10)
    assert breakdown.total == pytest.approx([5 + 1 + 0.5 + 0 + 0.5])


@pytest.mark.parametrize(
    ("row", "expected"),
    [({"accuracy": 1, "has_reasoning": 0}, 0.8), ({"accuracy": 1, "has_reasoning": 1}, 1.0),
     ({"accuracy": 0, "has_reasoning": 1}, 0.2)],
)  # fmt: skip
def test_step_audio_r1_by_hand(row, expected):
    rubric = Rubric([fixed("accuracy"), fixed("has_reasoning")], "step_audio_r1")
    breakdown = rubric.score(["x"], [row])
    assert breakdown.total == pytest.approx([expected])
    assert breakdown.weights == {"accuracy": 0.8, "has_reasoning": 0.2}


def test_step_audio_r1_with_real_rewards_and_role_mapping():
    rubric = Rubric([TermSpec("accuracy", label="acc"), TermSpec("has_reasoning")], "step_audio_r1",
                    {"roles": {"accuracy": "acc"}})  # fmt: skip
    total = rubric.score(["<think>hmm</think><answer>x</answer>"], [{"answer": "x"}]).total
    assert total == pytest.approx([1.0])
    with pytest.raises(ValueError, match="has_reasoning"):
        Rubric([TermSpec("accuracy")], "step_audio_r1")


def test_rubric_validation_errors():
    with pytest.raises(ValueError, match="at least one"):
        Rubric([])
    with pytest.raises(ValueError, match="listed twice"):
        Rubric([TermSpec("accuracy"), TermSpec("accuracy")])
    with pytest.raises(ValueError, match="finite"):
        Rubric([TermSpec("accuracy", weight=math.nan)])
    with pytest.raises(ValueError, match=r"has no option\(s\) \['rul'\] \(did you mean \['rule'\]"):
        Rubric([TermSpec("accuracy", options={"rul": "mmau"})])
    with pytest.raises(KeyError, match="unknown reward combiner 'summ'"):
        Rubric([TermSpec("accuracy")], "summ")
    with pytest.raises(ValueError, match="'none'"):
        Rubric([TermSpec("accuracy")], "sum", {"none": "drop"})


def test_user_combiner_by_import_path():
    combiner = get_combiner("rewards.combiners:weighted_sum")
    assert combiner is weighted_sum


def test_rubric_from_config_forms_and_errors():
    rubric = rubric_from_config([{"name": "accuracy"}, "format"])
    assert rubric.combiner_name == "sum" and [s.key for s in rubric.specs] == ["accuracy", "format"]
    with pytest.raises(ValueError, match="unknown key"):
        rubric_from_config({"combiner": "sum", "terms": ["accuracy"], "weights": [1]})
    with pytest.raises(ValueError, match=r"terms\[0\].*unknown key"):
        rubric_from_config({"terms": [{"name": "accuracy", "wieght": 2}]})
    with pytest.raises(ValueError, match="non-empty"):
        rubric_from_config({"terms": []})


# --- failed (RewardFailure) vs not applicable (None) vs a failed term of weight 0 ------------------------------------

FAIL = RewardFailure("judge timed out")
THINKS = "<think>r</think><answer>a</answer>"


def term(key, weight=1.0):
    return TermSpec("test_field", weight, {"field": key}, label=key)


SUM = [term("a"), term("b"), term("c", 0.0)]
CESAR = [term("accuracy"), term("format"), term("consistency"), term("other", 0.0)]
THINKER = [term("accuracy"), term("format"), term("consistency"), term("thinking")]
THINKER_W0 = [term("accuracy"), term("format"), term("consistency"), term("thinking", 0.0)]
USER = [term("a"), term("b"), term("c", 0.0)]


@pytest.mark.parametrize(
    ("combiner", "specs", "values", "total", "unscored"),
    [
        # sum: None is left out, a failure unscores the row, a failure of weight 0 is only logged
        ("sum", SUM, {"a": 1, "b": 0.5, "c": 1}, 1.5, None),
        ("sum", SUM, {"a": 1, "b": None, "c": 1}, 1.0, None),
        ("sum", SUM, {"a": 1, "b": FAIL, "c": 1}, None, "b: judge timed out"),
        ("sum", SUM, {"a": 1, "b": 0.5, "c": FAIL}, 1.5, None),
        ("sum", SUM, {"a": FAIL, "b": FAIL, "c": 1}, None, "a: judge timed out; b: judge timed out"),
        ("sum", SUM, {"a": None, "b": None, "c": None}, None, None),  # nothing applies: no total, not a failure
        # cesar: 5 acc + format + consistency (+ other at weight 0)
        ("cesar", CESAR, {"accuracy": 1, "format": 1, "consistency": 0.5, "other": 1}, 6.5, None),
        ("cesar", CESAR, {"accuracy": 1, "format": 1, "consistency": None, "other": 1}, 6.0, None),
        ("cesar", CESAR, {"accuracy": 1, "format": 1, "consistency": FAIL, "other": 1}, None, "consistency: judge"),
        ("cesar", CESAR, {"accuracy": 1, "format": 1, "consistency": 0.5, "other": FAIL}, 6.5, None),
        # audio_thinker at p = 1 on a thinking rollout: R_a (1 + 0.5 R_c) + 0.5 R_f + R_t
        ("audio_thinker", THINKER, {"accuracy": 1, "format": 1, "consistency": 1, "thinking": 0.8}, 2.8, None),
        ("audio_thinker", THINKER, {"accuracy": 1, "format": 1, "consistency": FAIL, "thinking": 0.8}, None,
         "consistency: judge"),
        ("audio_thinker", THINKER, {"accuracy": 1, "format": 1, "consistency": 1, "thinking": FAIL}, None,
         "thinking: judge"),
        ("audio_thinker", THINKER_W0, {"accuracy": 1, "format": 1, "consistency": 1, "thinking": FAIL}, 2.0, None),
        # a user combiner that ignores None and failures alike (always 7): the rubric still unscores the row
        ("helpers.failing_rewards:always_seven", USER, {"a": 1, "b": 0.5, "c": 1}, 7.0, None),
        ("helpers.failing_rewards:always_seven", USER, {"a": 1, "b": None, "c": 1}, 7.0, None),
        ("helpers.failing_rewards:always_seven", USER, {"a": 1, "b": FAIL, "c": 1}, None, "b: judge timed out"),
        ("helpers.failing_rewards:always_seven", USER, {"a": 1, "b": 0.5, "c": FAIL}, 7.0, None),
    ],
)  # fmt: skip
def test_failed_is_not_none_for_every_combiner(combiner, specs, values, total, unscored):
    rubric = Rubric(specs, combiner)
    breakdown = rubric.score([THINKS], [values], RewardContext(step=1, total_steps=1))
    assert breakdown.total == [pytest.approx(total) if total is not None else None]
    assert (breakdown.unscored[0] or "").startswith(unscored or "") and (breakdown.unscored[0] is None) == (
        unscored is None
    )
    for key, value in values.items():  # the failure's reason is kept; the combiner saw None
        assert breakdown.failed[key] == [FAIL.reason if value is FAIL else None]
        assert breakdown.terms[key] == [None if value is FAIL or value is None else float(value)]
    if unscored is not None:
        assert all(column == [None] for column in breakdown.weighted.values())


def test_failures_survive_row_slicing_and_the_limit_names_them():
    rubric = Rubric(SUM, max_unscored_fraction=0.25)
    rows = [{"a": 1, "b": 1, "c": 1}, {"a": 1, "b": FAIL, "c": 1}, {"a": 1, "b": 0, "c": FAIL}, {"a": 1, "b": 1}]
    breakdown = rubric.score(["x"] * 4, rows)
    part = breakdown.rows(1, 3)
    assert part.failed == {"a": [None, None], "b": ["judge timed out", None], "c": [None, "judge timed out"]}
    assert part.unscored == ["b: judge timed out", None] and part.total == [None, 1.0]
    rubric.check_unscored(breakdown)  # 1 of 4 = 25%: at the limit, allowed
    failing = rows[:3] + [{"a": 1, "b": RewardFailure("HTTP 503"), "c": 1}]
    with pytest.raises(UnscoredRowsError) as caught:
        rubric.check_unscored(rubric.score(["x"] * 4, failing))
    assert str(caught.value) == (
        "2 of 4 completions (50%) are unscored, more than rewards.max_unscored_fraction=0.25 allows: b failed on 2 "
        "(first: 'judge timed out'); c failed on 1 (weight 0: logged only) (first: 'judge timed out')"
    )
    with pytest.raises(ValueError, match=r"max_unscored_fraction must be a number in \[0, 1\]"):
        Rubric(SUM, max_unscored_fraction=1.5)
    assert rubric_from_config({"terms": ["accuracy"], "max_unscored_fraction": 0.5}).max_unscored_fraction == 0.5


def test_a_per_completion_reward_may_fail_and_bad_values_still_stop():
    assert Rubric([term("a")]).score(["x"], [{"a": FAIL}]).failed == {"a": ["judge timed out"]}
    with pytest.raises(TypeError, match="expected a float, None or a RewardFailure"):
        Rubric([term("a")]).score(["x"], [{"a": "judge timed out"}])
    with pytest.raises(TypeError, match="non-empty reason"):
        RewardFailure("")
