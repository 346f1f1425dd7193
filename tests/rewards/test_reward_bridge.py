"""The TRL reward bridge: the context it builds from TRL's ``completion_ids`` (lengths, finish reasons, the length
limit) and the per-category means it logs."""

from collections import defaultdict

import pytest

from grpo_audio.train.reward_bridge import make_trl_reward, metric_key_part, row_categories
from rewards import Rubric, TermSpec, register_reward
from rewards import registry as registry_module

CHOICES = ["high", "low"]


@pytest.fixture
def seen_contexts():
    """A registered reward that records the context it was given (the registry is restored afterwards)."""
    saved = dict(registry_module._REGISTRY)
    contexts = []

    @register_reward("tmp_context_probe", batched=True)
    def probe(completions, samples, context):
        contexts.append(context)
        return [0.0] * len(completions)

    yield contexts
    registry_module._REGISTRY.clear()
    registry_module._REGISTRY.update(saved)


def call(reward, completions, **columns):
    """Call ``reward`` as TRL does; returns (R_total, {metric: [values]})."""
    logged = defaultdict(list)
    total = reward(
        prompts=["p"] * len(completions),
        completions=completions,
        trainer_state=None,
        log_metric=lambda name, value: logged[name].append(value),
        **columns,
    )
    return total, dict(logged)


def test_lengths_and_finish_reasons_come_from_completion_ids(seen_contexts):
    reward = make_trl_reward(Rubric([TermSpec("tmp_context_probe")]), 2, max_length=5, stop_token_ids=[0, 9])
    ids = [[4, 5, 0], [4, 5, 6, 7, 8], [9], [4, 0, 6, 7, 8]]  # EOS; cut at 5; pad; an EOS inside does not stop it
    call(reward, ["a", "b", "c", "d"], completion_ids=ids)
    context = seen_contexts[-1]
    assert context.lengths == [3, 5, 1, 5]
    assert context.finish_reasons == ["stop", "length", "stop", "length"]
    assert context.max_length == 5 and context.group_size == 2


def test_stop_ids_may_be_known_only_at_scoring_time(seen_contexts):
    stop_ids = []  # filled after the reward function is built, as TRL fills eos_token_ids in its constructor
    reward = make_trl_reward(Rubric([TermSpec("tmp_context_probe")]), 1, stop_token_ids=lambda: stop_ids)
    stop_ids.append(2)
    call(reward, ["a", "b"], completion_ids=[[1, 2], [1, 1]])
    assert seen_contexts[-1].finish_reasons == ["stop", "length"]
    assert seen_contexts[-1].max_length is None


def test_without_stop_ids_or_ids_the_context_says_unknown(seen_contexts):
    reward = make_trl_reward(Rubric([TermSpec("tmp_context_probe")]), 1)
    call(reward, ["a"], completion_ids=[[1, 2]])
    assert (seen_contexts[-1].lengths, seen_contexts[-1].finish_reasons) == ([2], None)
    call(reward, ["a"])
    assert (seen_contexts[-1].lengths, seen_contexts[-1].finish_reasons) == (None, None)
    with pytest.raises(ValueError, match="2 completion_ids for 1 completions"):
        call(reward, ["a"], completion_ids=[[1], [2]])


def test_overlong_through_the_bridge():
    rubric = Rubric([TermSpec("overlong", options={"l_cache": 4})])
    reward = make_trl_reward(rubric, 1, max_length=8, stop_token_ids=[0])
    total, logged = call(reward, ["a", "b", "c"], completion_ids=[[1] * 4, [1] * 5 + [0], [1] * 8])
    assert total == [0.0, -0.5, -1.0]
    assert logged["rewards/overlong/mean"] == [pytest.approx(-0.5)]


def test_rewards_are_logged_per_category():
    rubric = Rubric([TermSpec("accuracy"), TermSpec("format", 0.5)])
    reward = make_trl_reward(rubric, 2)
    good = "<think>bright</think><answer>high</answer>"
    wrong = "<think>bright</think><answer>low</answer>"
    tagless = "high"
    completions = [good, wrong, good, tagless, good, wrong]
    columns = {
        "answer": ["high", "high", "high", "high", "high", None],  # the last row has no gold: accuracy None
        "choices": [CHOICES] * 6,
        "task": ["pitch", "pitch", None, None, None, None],
        "question_type": [None, None, "Come From", "Come From", None, None],
        "category": ["ignored", "ignored", "ignored", "ignored", None, None],  # task and question_type come first
    }
    total, logged = call(reward, completions, **columns)
    format_score = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert total == [1.5, 0.5, 1.5, 0.0, 1.5, 0.5]
    by_category = {k: v for k, v in logged.items() if k.startswith("rewards_by_category/")}
    assert by_category == {
        "rewards_by_category/pitch/accuracy/mean": [0.5],
        "rewards_by_category/pitch/format/mean": [1.0],
        "rewards_by_category/pitch/R_total/mean": [1.0],
        "rewards_by_category/Come_From/accuracy/mean": [0.5],
        "rewards_by_category/Come_From/format/mean": [0.5],
        "rewards_by_category/Come_From/R_total/mean": [0.75],
    }  # rows 4 and 5 have no category: only in the overall means
    assert logged["rewards/format/mean"] == [sum(format_score) / 6]


def test_a_category_without_values_for_a_term_logs_nothing_for_it():
    reward = make_trl_reward(Rubric([TermSpec("accuracy"), TermSpec("format")]), 1)
    _, logged = call(reward, ["<answer>high</answer>"], answer=[None], choices=[CHOICES], category=["speech"])
    assert "rewards_by_category/speech/accuracy/mean" not in logged
    assert logged["rewards_by_category/speech/format/mean"] == [0.0]
    assert logged["rewards_by_category/speech/R_total/mean"] == [0.0]


def test_rows_without_categories_log_no_category_metrics():
    reward = make_trl_reward(Rubric([TermSpec("accuracy")]), 1)
    _, logged = call(reward, ["<answer>high</answer>"], answer=["high"], choices=[CHOICES], task=[None])
    assert not [k for k in logged if k.startswith("rewards_by_category/")]
    _, logged = call(reward, ["<answer>high</answer>"], answer=["high"], choices=[CHOICES])
    assert not [k for k in logged if k.startswith("rewards_by_category/")]


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("sound", "sound"),
        ("Come From", "Come_From"),
        ("Sound / Music", "Sound_Music"),  # a '/' would nest the tag in TensorBoard and W&B
        ("Acoustic scene (indoor)", "Acoustic_scene_indoor"),
        ("sub-category.v2", "sub-category.v2"),
        ("音乐", "音乐"),
        ("///", "_"),
        (3, "3"),
    ],
)
def test_category_names_become_safe_metric_key_segments(value, key):
    assert metric_key_part(value) == key


def test_category_fields_are_read_in_order():
    samples = [
        {"task": "sound", "category": "Sound"},
        {"task": None, "question_type": "Which", "category": "x"},
        {"task": " ", "category": "perception"},  # blank counts as unset
        {"answer": "high"},
    ]
    assert row_categories(samples) == ["sound", "Which", "perception", None]
    assert row_categories(samples, ("category",)) == ["Sound", "x", "perception", None]


def test_a_batch_scored_ahead_with_the_same_arguments_is_not_scored_again(seen_contexts):
    """``rollout.overlap`` scores a prefetched batch in the background (``grpo_audio.train.scoring_ahead``);
    ``R_total`` takes that breakdown only when texts, rows and context are the ones it would score."""
    from types import SimpleNamespace

    from grpo_audio.train.scoring_ahead import ahead_scorer

    class Decoder:  # decodes id k as the letter chr(96 + k); 0 is the EOS, left out like a special token
        def batch_decode(self, ids, skip_special_tokens):
            assert skip_special_tokens
            return ["".join(chr(96 + k) for k in row if k) for row in ids]

    rubric = Rubric([TermSpec("tmp_context_probe")])
    rows = [{"prompt": "p", "id": "q1", "answer": "high"}, {"prompt": "p", "id": "q1", "answer": "high"}]
    ids = [[1, 2, 0], [3, 4, 5]]
    settings = dict(total_steps=10, group_size=2, max_length=3, stop_token_ids=[0])
    ahead = ahead_scorer(rubric, Decoder(), rows, step=4, **settings)(SimpleNamespace(completion_ids=ids))
    assert ahead.texts == ["ab", "cde"] and len(seen_contexts) == 1
    offered = []

    def lookup(texts, samples, context):
        offered.append((texts, samples, context))
        return ahead.breakdown if ahead.answers(texts, samples, context) else None

    reward = make_trl_reward(rubric, 2, max_length=3, stop_token_ids=[0], prescored=lookup)
    trl_columns = {"id": ["q1", "q1"], "answer": ["high", "high"], "completion_ids": ids}  # TRL: all but the prompt

    def at_step(step, completions):
        logged = defaultdict(list)
        state = SimpleNamespace(global_step=step, max_steps=10)
        reward(prompts=["p", "p"], completions=completions, trainer_state=state,
               log_metric=lambda name, value: logged[name].append(value), **trl_columns)  # fmt: skip
        return logged

    logged = at_step(4, ["ab", "cde"])
    assert len(seen_contexts) == 1  # taken from the background's breakdown: the rubric was not called again
    assert logged["rewards/tmp_context_probe/mean"] == [0.0]  # and logged as if scored here
    texts, samples, context = offered[0]
    assert (texts, samples, context) == (ahead.texts, ahead.samples, ahead.context)
    at_step(5, ["ab", "cde"])  # another step: another context
    at_step(4, ["ab", "cdf"])  # another text
    assert len(seen_contexts) == 3


def test_rows_with_array_columns_are_scored_again():
    import numpy as np

    from grpo_audio.train.scoring_ahead import ScoredAhead
    from rewards import RewardContext

    ahead = ScoredAhead(["a"], [{"x": np.zeros(3)}], RewardContext(), breakdown=None, seconds=0.0)
    assert not ahead.answers(["a"], [{"x": np.zeros(3)}], RewardContext())  # no plain equality: never a guess
