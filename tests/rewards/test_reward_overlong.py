"""Rewards that see lengths: DAPO's soft overlong punishment, the context's per-row lengths and finish reasons, and
`rewards score` supplying them from the input rows."""

import io
import json
import textwrap

import pytest

from rewards import RewardContext, RewardError, Rubric, TermSpec, get_reward
from rewards.overlong import punishment
from rewards.score_cli import main

overlong = get_reward("overlong")
L_MAX, L_CACHE = 20, 8  # unpunished up to L_max - L_cache = 12 tokens


def scores(lengths, **options):
    context = RewardContext(lengths=lengths, max_length=options.pop("max_length", None))
    return overlong.score_batch(["x"] * len(lengths), [{}] * len(lengths), context, **options)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, 0.0),
        (L_MAX - L_CACHE, 0.0),  # the last unpunished length
        (L_MAX - L_CACHE + 1, -1 / L_CACHE),  # the ramp's first step
        (L_MAX - L_CACHE // 2, -0.5),  # the ramp's midpoint
        (L_MAX, -1.0),  # the ramp's end
        (L_MAX + 1, -1.0),  # beyond L_max: flat -1
        (10 * L_MAX, -1.0),
    ],
)
def test_dapo_eq13_values_at_the_edges(length, expected):
    assert punishment(length, L_MAX, L_CACHE) == pytest.approx(expected)
    assert scores([length], l_max=L_MAX, l_cache=L_CACHE) == [pytest.approx(expected)]


def test_paper_setting():
    # DAPO: L_max 20,480, L_cache 4,096; expected maximum length 16,384
    assert punishment(16_384, 20_480, 4_096) == 0.0
    assert punishment(18_432, 20_480, 4_096) == -0.5
    assert punishment(20_480, 20_480, 4_096) == -1.0


def test_l_max_defaults_to_the_runs_length_limit():
    assert scores([12, 16, 20], l_cache=L_CACHE, max_length=L_MAX) == [0.0, -0.5, -1.0]
    # an explicit l_max wins over the context's limit
    assert scores([12, 16], l_cache=4, l_max=16, max_length=L_MAX) == [0.0, -1.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "'l_cache'.*is required"),
        ({"l_max": 20}, "'l_cache'.*is required"),
        ({"l_cache": 0}, "'l_cache' must be >= 1"),
        ({"l_cache": 2.5}, "'l_cache' must be a finite integer"),
        ({"l_cache": True}, "'l_cache' must be a finite integer"),
        ({"l_cache": 4, "l_max": "long"}, "'l_max' must be a finite integer"),
        ({"l_cache": 30, "l_max": 20}, r"'l_cache' \(30\) must be <= 'l_max' \(20\)"),
        ({"l_cache": 4, "lmax": 20}, r"has no option\(s\) \['lmax'\]"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        overlong.validate(options)
    with pytest.raises(ValueError, match=message):
        Rubric([TermSpec("overlong", options=options)])


def test_good_options_validate():
    overlong.validate({"l_cache": 8})
    overlong.validate({"l_cache": 20, "l_max": 20})


def test_no_lengths_is_an_error_not_zeros():
    with pytest.raises(RewardError, match="overlong.*length in tokens.*'length' field"):
        overlong.score_batch(["a", "b"], [{}, {}], RewardContext(max_length=20), l_cache=8)


def test_no_length_limit_is_an_error():
    with pytest.raises(RewardError, match="no 'l_max' option and no length limit"):
        scores([5], l_cache=8)
    with pytest.raises(RewardError, match=r"l_cache \(30\) must be <= L_max \(20\)"):
        scores([5], l_cache=30, max_length=20)


def test_context_lengths_must_match_the_batch():
    with pytest.raises(ValueError, match="lengths has 1 entries for 2 completions"):
        overlong.score_batch(["a", "b"], [{}, {}], RewardContext(lengths=[3], max_length=20), l_cache=8)
    with pytest.raises(ValueError, match="lengths has 1 entries for 2 completions"):
        Rubric([TermSpec("overlong", options={"l_cache": 8})]).score(
            ["a", "b"], [{}, {}], RewardContext(lengths=[3], max_length=20)
        )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lengths": [-1]}, "token counts"),
        ({"lengths": [1.5]}, "token counts"),
        ({"finish_reasons": ["eos"]}, "finish_reasons must be one of"),
        ({"lengths": [1, 2], "finish_reasons": ["stop"]}, "2 lengths but 1 finish reasons"),
        ({"max_length": 0}, "max_length must be an integer >= 1"),
    ],
)
def test_context_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        RewardContext(**fields)


# A user's length-budget reward, as docs/rewards.md shows it (registered by import path).
LENGTH_BUDGET = """
def length_budget(completions, samples, context, budget=200):
    \"\"\"r = 1 for |y| <= budget tokens, then linear down to 0 at the run's limit; 0 for a completion cut there.\"\"\"
    if context.lengths is None or context.finish_reasons is None:
        raise ValueError("length_budget needs the completions' lengths and finish reasons")
    limit = context.max_length
    return [
        0.0 if reason == "length" else min(1.0, (limit - n) / (limit - budget))
        for n, reason in zip(context.lengths, context.finish_reasons)
    ]


length_budget.batched = True  # batched rewards receive the context
"""


def test_a_user_length_budget_reward_reads_the_context(tmp_path, monkeypatch):
    (tmp_path / "budget_rewards.py").write_text(textwrap.dedent(LENGTH_BUDGET))
    monkeypatch.syspath_prepend(str(tmp_path))
    rubric = Rubric([TermSpec("budget_rewards:length_budget", options={"budget": 10}, label="budget")])
    context = RewardContext(lengths=[4, 10, 15, 20], finish_reasons=["stop", "stop", "stop", "length"], max_length=20)
    assert rubric.score(["a"] * 4, [{}] * 4, context).terms["budget"] == [1.0, 1.0, 0.5, 0.0]
    with pytest.raises(RewardError, match="needs the completions' lengths"):
        rubric.score(["a"], [{}], RewardContext(max_length=20))


# --- `rewards score` with lengths ---------------------------------------------------------------------------------

RUBRIC = "terms:\n  - {name: overlong, options: {l_cache: 8}}\n"


def run_score(tmp_path, rows, *extra):
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text(RUBRIC)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "scores.jsonl"
    out = io.StringIO()
    argv = ["score", "--rewards", str(rubric), "--input", str(data), "--output", str(output), *extra]
    code = main(argv, out=out)
    records = [json.loads(line) for line in output.read_text().splitlines()] if code == 0 else []
    return code, records


def test_score_cli_reads_lengths_from_the_rows(tmp_path):
    rows = [
        {"completion": "a", "length": 12, "finish_reason": "stop", "answer": "x"},  # flat form
        {"completion": "b", "length": 16, "finish_reason": "stop", "sample": {"answer": "x"}},  # next to 'sample'
        {"completion": "c", "length": 20, "finish_reason": "length", "answer": "x"},
    ]
    code, records = run_score(tmp_path, rows, "--max-length", "20")
    assert code == 0
    assert [r["terms"]["overlong"] for r in records] == [0.0, -0.5, -1.0]
    # the completion's own fields are not sample fields
    code, records = run_score(tmp_path, [{"completion": "a", "length": 16}], "--max-length", "20")
    assert code == 0 and records[0]["terms"]["overlong"] == -0.5


def test_score_cli_length_fields_are_taken_out_of_the_sample(tmp_path, monkeypatch):
    (tmp_path / "sample_keys.py").write_text(
        "def keys(completions, samples, context):\n    return [float(len(s)) for s in samples]\nkeys.batched = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rubric = tmp_path / "keys.yaml"
    rubric.write_text("terms: ['sample_keys:keys']\n")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"completion": "a", "length": 3, "finish_reason": "stop", "answer": "x"}) + "\n")
    output = tmp_path / "scores.jsonl"
    assert main(["score", "--rewards", str(rubric), "--input", str(data), "--output", str(output)]) == 0
    assert json.loads(output.read_text())["terms"]["sample_keys:keys"] == 1.0  # only 'answer'


def test_score_cli_without_lengths_fails_clearly(tmp_path, capsys):
    code, _ = run_score(tmp_path, [{"completion": "a"}], "--max-length", "20")
    assert code == 1
    assert "overlong needs each completion's length in tokens" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"completion": "a", "length": 3}, {"completion": "b"}], "rows.jsonl:2: no 'length' while other rows"),
        ([{"completion": "a", "length": -3}], "'length' must be a token count"),
        ([{"completion": "a", "length": "3"}], "'length' must be a token count"),
        ([{"completion": "a", "length": 3, "finish_reason": "eos"}], "'finish_reason' must be one of"),
    ],
)
def test_score_cli_refuses_bad_lengths(tmp_path, capsys, rows, message):
    code, _ = run_score(tmp_path, rows, "--max-length", "20")
    assert code == 2
    assert message in capsys.readouterr().err
