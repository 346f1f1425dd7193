"""Table tests: the format reward in its three modes, with prefilled <think>."""

import pytest

from rewards import get_reward

fmt = get_reward("format").fn
LONG = "<think>" + "step. " * 50000 + "</think><answer>x</answer>"

# (completion, search, strict, adaptive)
TABLE = [
    ("<think>a</think><answer>b</answer>", 1, 1, 1),
    ("<think>multi\nline\nreasoning</think>\n<answer>b</answer>\n", 1, 1, 1),
    ("<think></think><answer>b</answer>", 1, 1, 1),  # empty think: the regexes allow it
    ("<answer>b</answer>", 0, 0, 1),  # bare answer: only Audio-Thinker's adaptive format accepts it
    ("<think>a</think>", 0, 0, 0),  # missing answer
    ("<think>a</think><answer>b", 0, 0, 0),  # unclosed answer
    ("<think>a<answer>b</answer>", 0, 0, 0),  # unclosed think
    ("a</think><answer>b</answer>", 0, 0, 0),  # prefilled template, flag not set: every sample 0
    ("preamble <think>a</think> middle <answer>b</answer> tail", 1, 0, 0),  # search tolerates text around
    ("<think>a</think><answer>b</answer><answer>c</answer>", 1, 0, 0),  # duplicated answer
    ("<think>a</think><think>c</think><answer>b</answer>", 1, 0, 0),  # duplicated think
    ("<think><think>a</think></think><answer>b</answer>", 1, 0, 0),  # nested think
    ("<think>a</think><answer><answer>b</answer></answer>", 1, 0, 0),  # nested answer
    ("<answer>b</answer><think>a</think>", 0, 0, 0),  # wrong order
    ("<answer>b</answer><answer>c</answer>", 0, 0, 0),
    ("<THINK>a</THINK><ANSWER>b</ANSWER>", 0, 0, 0),  # tags are case-sensitive
    ("<think>声音很高</think><answer>女人 😀</answer>", 1, 1, 1),  # unicode
    ("", 0, 0, 0),
    (LONG, 1, 1, 1),  # very long
]


@pytest.mark.parametrize(("completion", "search", "strict", "adaptive"), TABLE)
def test_format_modes(completion, search, strict, adaptive):
    assert fmt(completion, {}) == search  # default mode is the paper's Eq. 2
    assert fmt(completion, {}, mode="search") == search
    assert fmt(completion, {}, mode="strict") == strict
    assert fmt(completion, {}, mode="adaptive") == adaptive


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("a</think><answer>b</answer>", 1.0),  # the template emitted <think>
        ("<think>a</think><answer>b</answer>", 1.0),  # the model repeated it anyway: not doubled
        ("a<answer>b</answer>", 0.0),
        ("</think><answer>b</answer>", 1.0),  # empty reasoning
    ],
)
def test_format_think_prefilled(completion, expected):
    for mode in ("search", "strict", "adaptive"):
        assert fmt(completion, {}, think_prefilled=True, mode=mode) == expected


def test_format_bad_mode_fails_validation():
    with pytest.raises(ValueError, match="mode"):
        get_reward("format").validate({"mode": "loose"})
    with pytest.raises(ValueError, match="has no option"):
        get_reward("format").validate({"modee": "strict"})
