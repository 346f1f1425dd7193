"""A reward term that fails on a completion leaves it unscored: no R_total, advantage 0, nothing in the loss; the
group's other completions are normalised among themselves. Too many unscored completions stop training, and an
unreachable judge stops the run before step 1.

The failing term is a user plugin (``tests/helpers/failing_rewards.py``) worth i on batch row i that fails on the
rows it is told to, so the failures are deterministic whatever the tiny model samples.
"""

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.ports import refusing_port

from grpo_audio.train import run as training
from grpo_audio.train.callbacks import ProgressLineCallback
from rewards import RewardProbeError, UnscoredRowsError

G = 4


def flaky_terms(fail_rows: list[int]) -> str:
    return (
        'rewards.terms=[{name: "helpers.failing_rewards:by_row", label: flaky, '
        f"options: {{fail_rows: {fail_rows}}}}}]"
    )


def two_groups(setup) -> list[dict]:
    return [setup.dataset[i] for i in range(2) for _ in range(G)]


def group_advantages(rewards: list[float]) -> list[float]:
    """TRL's sum_then_normalize with scale_rewards='group': (r - mean) / (sample std + 1e-4)."""
    mean, std = statistics.mean(rewards), statistics.stdev(rewards)
    return [(r - mean) / (std + 1e-4) for r in rewards]


@pytest.mark.slow
def test_a_failed_completion_gets_no_advantage_and_no_loss(tiny_recipe):
    setup = training.build_training(tiny_recipe(flaky_terms([1])))
    trainer = setup.trainer
    output = trainer._generate_and_score_completions(two_groups(setup))

    advantages = output["advantages"]
    assert advantages[1].item() == 0.0
    # group 0 is normalised over rows 0, 2, 3 only (rewards 0, 2, 3); group 1 over all four (4..7)
    expected = group_advantages([0.0, 2.0, 3.0]) + group_advantages([4.0, 5.0, 6.0, 7.0])
    torch.testing.assert_close(advantages[[0, 2, 3, 4, 5, 6, 7]], torch.tensor(expected))

    mask = output["completion_mask"]
    assert mask[1].sum().item() == 0  # out of the loss, the KL term and the token count
    assert (mask[[0, 2, 3, 4, 5, 6, 7]].sum(dim=1) > 0).all()
    assert output["num_items_in_batch"].item() == mask.sum().item()

    breakdown = trainer.last_breakdown
    assert breakdown.total == [0.0, None, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert breakdown.unscored == [None, "flaky: stub judge timed out"] + [None] * 6
    records = [json.loads(line) for line in (setup.run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert (records[1]["R_total"], records[1]["advantage"]) == (None, 0.0) and records[1]["length"] > 0
    assert records[1]["unscored"] == "flaky: stub judge timed out"
    assert records[1]["failed"] == {"flaky": "stub judge timed out"}
    assert records[0]["unscored"] is None and records[0]["failed"] == {}

    metrics = {**trainer._metrics["eval"], **trainer._metrics["train"]}
    assert metrics["rewards/unscored_frac"] == [1 / 8] and metrics["rewards/unscored"] == [1.0]
    assert metrics["rewards/flaky/failed_frac"] == [1 / 8] and metrics["rewards/flaky/none_frac"] == [0.0]


@pytest.mark.slow
def test_too_many_unscored_completions_stop_training(tiny_recipe):
    recipe = tiny_recipe(flaky_terms([0, 1, 5]), "rewards.max_unscored_fraction=0.25")
    setup = training.build_training(recipe)
    with pytest.raises(UnscoredRowsError) as caught:
        setup.trainer.train()
    assert str(caught.value) == (
        "3 of 8 completions (38%) are unscored, more than rewards.max_unscored_fraction=0.25 allows: flaky failed on "
        "3 (first: 'stub judge timed out'); the run stopped at step 1, before its update"
    )
    assert setup.trainer.state.global_step == 0


def test_an_unreachable_judge_stops_the_run_before_the_model_is_built(tiny_recipe):
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}/v1"
        judge = f'{{url: "{url}", model: judge-8b, retries: 0, timeout_s: 2}}'
        recipe = tiny_recipe(f"rewards.terms=[{{name: accuracy}}, {{name: consistency, options: {judge}}}]")
        with pytest.raises(RewardProbeError) as caught:
            training.build_training(recipe)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("reward term 'consistency': probe failed: consistency judge 'judge-8b' at " + url)
    assert "did not answer the probe request (one try, 2 s): connection: ConnectionRefusedError" in message
    assert not (Path(recipe.run.output_dir) / "initial_model").exists()  # stopped before the model was built


def test_progress_line_shows_unscored_completions_only_when_there_are_some():
    lines = []
    callback = ProgressLineCallback(["flaky"], printer=lambda line, flush: lines.append(line))
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, max_steps=2)
    callback.on_train_begin(None, state, None)
    logs = {"reward": 1.0, "rewards/flaky/mean": 2.0, "rewards/unscored": 1.0, "rewards/unscored_frac": 0.125}
    callback.on_log(None, state, None, logs=logs)
    callback.on_log(None, state, None, logs={**logs, "rewards/unscored": 0.0, "rewards/unscored_frac": 0.0})
    assert "| unscored 1 (12%) |" in lines[0] and "unscored" not in lines[1]


@pytest.mark.parametrize("value", ["-0.1", "1.5", ".nan"])
def test_max_unscored_fraction_must_be_a_share(value):
    from grpo_audio.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=r"rewards.max_unscored_fraction=.*between 0 and 1"):
        load_recipe(None, [f"rewards.max_unscored_fraction={value}"])
    assert load_recipe(None, []).rewards.max_unscored_fraction == 0.2


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_rows_outside_the_loss_do_not_shrink_a_per_sequence_step(tiny_recipe, loss_type):
    """k unscored rows give the same gradient as the same batch without them (TRL's per-sequence losses divide by
    the micro-batch's row count, masked rows included: without the rescaling the step is 6/8 of this)."""
    setup = training.build_training(
        tiny_recipe(
            flaky_terms([1, 6]),
            f"trainer.loss_type={loss_type}",
            "trainer.beta=0.04",
            "rewards.max_unscored_fraction=0.5",
        )
    )
    trainer = setup.trainer
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    output = trainer._generate_and_score_completions(two_groups(setup))
    assert output["num_loss_rows"].item() == 6
    keep = torch.tensor([0, 2, 3, 4, 5, 7])
    without = {k: v[keep] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in output.items()}

    def gradient(inputs):
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, inputs).backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    with_masked, alone = gradient(output), gradient(without)
    assert with_masked and with_masked.keys() == alone.keys()
    for name, grad in with_masked.items():
        torch.testing.assert_close(grad, alone[name], rtol=1e-5, atol=1e-8)
    assert any(g.abs().max() > 0 for g in alone.values())


def test_progress_line_shows_dynamic_sampling_groups_only_when_it_runs():
    lines = []
    callback = ProgressLineCallback(["mixed"], printer=lambda line, flush: lines.append(line))
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, max_steps=2)
    callback.on_train_begin(None, state, None)
    logs = {"reward": 0.5, "rewards/mixed/mean": 0.5}
    callback.on_log(None, state, None, logs=logs)
    grouped = {"dynamic_sampling/groups_kept": 4.0, "dynamic_sampling/groups_generated": 12.0}
    callback.on_log(None, state, None, logs={**logs, **grouped, "dynamic_sampling/rounds": 3.0})
    assert "groups" not in lines[0] and "| groups 4/12 in 3 round(s) |" in lines[1]
