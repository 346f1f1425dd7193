"""Registry and reward-contract tests: duplicates, plugins by import path, suggestions, errors that name the reward."""

import math
import sys
import textwrap

import pytest

from rewards import (
    DuplicateRewardError,
    RewardContext,
    RewardError,
    RewardOutputError,
    Rubric,
    TermSpec,
    UnknownRewardError,
    get_reward,
    register_reward,
    registered_names,
)
from rewards import registry as registry_module


@pytest.fixture
def clean_registry():
    saved = dict(registry_module._REGISTRY)
    yield
    registry_module._REGISTRY.clear()
    registry_module._REGISTRY.update(saved)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Write a user module to tmp_path, put it on sys.path, and return its name."""
    name = f"user_rewards_{abs(hash(tmp_path)) % 10**8}"

    def write(source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        return name

    yield write
    sys.modules.pop(name, None)


def test_builtins_registered():
    assert {"accuracy", "format", "consistency", "thinking", "consistency_rule", "consistency_cesar", "thinking_rule",
            "overthinking", "keywords_rule", "has_reasoning", "overlong"} <= set(registered_names())  # fmt: skip


def test_duplicate_name_is_an_error(clean_registry):
    with pytest.raises(DuplicateRewardError, match="'accuracy' is already registered by rewards.accuracy.score"):

        @register_reward("accuracy")
        def other(completion, sample):
            return 1.0


def test_unknown_name_suggests():
    with pytest.raises(UnknownRewardError, match="did you mean 'accuracy'"):
        get_reward("acuracy")
    with pytest.raises(UnknownRewardError, match="cannot import module"):
        get_reward("no_such_pkg.mod:fn")
    with pytest.raises(KeyError):  # callers that catch KeyError keep working
        Rubric([TermSpec("fromat")])


def test_import_path_plugin(plugin):
    module = plugin(
        """
        def mentions_audio(completion, sample, bonus=1.0):
            return bonus if "audio" in completion else 0.0

        def anything(completion, sample, **options):
            return float(len(options))

        def per_group(completions, samples, context):
            # rank within each group: needs the whole group
            out = []
            g = context.group_size
            for i in range(0, len(completions), g):
                lengths = [len(c) for c in completions[i:i + g]]
                out += [float(x == max(lengths)) for x in lengths]
            return out
        per_group.group_level = True
        """
    )
    rubric = Rubric(
        [
            TermSpec(f"{module}:mentions_audio", 2.0, {"bonus": 0.5}, label="audio"),
            TermSpec(f"{module}:anything", 0.0, {"x": 1, "y": 2}, label="any"),
            TermSpec(f"{module}:per_group", 1.0, label="longest"),
        ]
    )
    breakdown = rubric.score(["audio", "no", "aa", "b"], [{}] * 4, RewardContext(group_size=2))
    assert breakdown.terms == {"audio": [0.5, 0.0, 0.0, 0.0], "any": [2.0] * 4, "longest": [1.0, 0.0, 1.0, 0.0]}
    assert breakdown.total == [2.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="needs whole groups"):
        rubric.score(["a", "b", "c"], [{}] * 3, RewardContext(group_size=2))
    # rows [i*G:(i+1)*G] must be one prompt's completions: a batch that interleaves prompts is refused
    mixed = [{"id": "p1"}, {"id": "p2"}, {"id": "p1"}, {"id": "p2"}]
    with pytest.raises(ValueError, match=r"rows 0\.\.1 mix the prompts \['p1', 'p2'\]"):
        rubric.score(["a", "b", "c", "d"], mixed, RewardContext(group_size=2))
    grouped = [{"id": "p1"}, {"id": "p1"}, {"id": "p2"}, {"id": "p2"}]
    part = rubric.score(["audio", "no", "aa", "b"], grouped, RewardContext(group_size=2)).rows(2, 4)
    assert part.terms["longest"] == [1.0, 0.0] and part.total == [1.0, 0.0] and part.weights == breakdown.weights
    with pytest.raises(ValueError, match=r"has no option\(s\) \['bonnus'\] \(did you mean \['bonus'\]\?\)"):
        Rubric([TermSpec(f"{module}:mentions_audio", options={"bonnus": 1})])
    with pytest.raises(UnknownRewardError, match="has no function 'missing'"):
        get_reward(f"{module}:missing")


def test_registered_plugin_with_validation_hook(clean_registry):
    def check(options):
        if options.get("level", 1) < 0:
            raise ValueError("level must be >= 0")

    @register_reward("tmp_levelled", validate=check)
    def levelled(completion, sample, level=1):
        return float(level)

    with pytest.raises(ValueError, match="reward 'tmp_levelled': level must be >= 0"):
        Rubric([TermSpec("tmp_levelled", options={"level": -1})])
    assert Rubric([TermSpec("tmp_levelled", options={"level": 3})]).score(["x"], [{}]).total == [3.0]


def test_reward_that_raises_names_itself_and_the_row(clean_registry):
    @register_reward("tmp_broken")
    def broken(completion, sample):
        if completion == "bad":
            raise KeyError("answer")
        return 1.0

    rubric = Rubric([TermSpec("accuracy"), TermSpec("tmp_broken")])
    with pytest.raises(RewardError, match=r"reward 'tmp_broken' raised KeyError on row 1 \(sample id 'q2'\)") as info:
        rubric.score(["ok", "bad"], [{"id": "q1", "answer": "x"}, {"id": "q2", "answer": "x"}])
    assert info.value.reward == "tmp_broken"
    assert isinstance(info.value.__cause__, KeyError)


def test_batched_reward_that_raises(clean_registry):
    @register_reward("tmp_batched_broken", batched=True)
    def broken(completions, samples, context):
        raise ConnectionError("judge down")

    with pytest.raises(RewardError, match="reward 'tmp_batched_broken' raised ConnectionError: judge down"):
        Rubric([TermSpec("tmp_batched_broken")]).score(["a"], [{}])


def test_wrong_count_names_the_reward(clean_registry):
    @register_reward("tmp_short", batched=True)
    def short(completions, samples, context):
        return [1.0] * (len(completions) - 1)

    with pytest.raises(RewardOutputError, match="reward 'tmp_short' returned 2 values for 3 completions"):
        Rubric([TermSpec("tmp_short")]).score(["a", "b", "c"], [{}] * 3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected(clean_registry, bad):
    @register_reward("tmp_nan")
    def nan_reward(completion, sample):
        return bad if completion == "x" else 0.5

    with pytest.raises(RewardOutputError, match=r"reward 'tmp_nan' returned (nan|inf|-inf) on row 1.*finite"):
        Rubric([TermSpec("tmp_nan")]).score(["y", "x"], [{}, {}])


def test_wrong_type_is_rejected(clean_registry):
    @register_reward("tmp_text")
    def text(completion, sample):
        return "1.0"

    with pytest.raises(TypeError, match="reward 'tmp_text' returned '1.0'"):
        get_reward("tmp_text").score_batch(["a"], [{}], RewardContext())


def test_bools_and_ints_become_floats(clean_registry):
    @register_reward("tmp_bool")
    def as_bool(completion, sample):
        return completion == "a"

    assert get_reward("tmp_bool").score_batch(["a", "b"], [{}, {}], RewardContext()) == [1.0, 0.0]


def test_metrics_hook(clean_registry):
    @register_reward("tmp_counted")
    def counted(completion, sample, scale=1):
        return 0.0

    counted.metrics = lambda **options: {"calls": 3.0 * options.get("scale", 1)}
    rubric = Rubric([TermSpec("tmp_counted", options={"scale": 2}, label="c")])
    assert rubric.metrics() == {"c/calls": 6.0}
