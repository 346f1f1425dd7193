"""Dynamic sampling (DAPO's group filtering): only groups whose rewards differ reach the update.

The reward is a plugin (``tests/helpers/mixed_signal.py``) that gives every prompt with an even id a constant
reward (a group with no variance) and the others a reward that varies with the completion, so which groups are
informative does not depend on what the tiny model learns.
"""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_audio.recipe import load_recipe
from grpo_audio.rollout.dynamic_sampling import (
    NO_SCORED_ROW,
    SURPLUS,
    ZERO_VARIANCE,
    classify_groups,
    group_drop_reason,
    refill_indices,
    select_groups,
)
from grpo_audio.train.run import build_training, train

TESTS = Path(__file__).resolve().parent
G = 4
PROMPTS = 4  # groups per step
MIXED = 'rewards.terms=[{name: "helpers.mixed_signal:half_informative", label: mixed}]'


def test_a_group_teaches_only_when_its_scored_rewards_differ():
    assert group_drop_reason([1.0, 1.0, 1.0, 1.0]) == ZERO_VARIANCE
    assert group_drop_reason([1.0, 0.0, 1.0, 1.0]) is None
    assert group_drop_reason([None, None, float("nan"), None]) == NO_SCORED_ROW
    assert group_drop_reason([1.0, None, None, None]) == ZERO_VARIANCE  # one scored row has no spread
    assert group_drop_reason([1.0, 0.0, None, float("nan")]) is None
    assert group_drop_reason([0.5, 0.5 + 1e-12]) == ZERO_VARIANCE  # TRL's isclose(std, 0)
    assert classify_groups([1.0, 1.0, 0.0, 1.0], 2) == [ZERO_VARIANCE, None]
    with pytest.raises(ValueError, match="whole groups of 2"):
        classify_groups([1.0, 0.0, 1.0], 2)


def test_the_step_keeps_the_first_informative_groups_and_fills_only_when_short():
    reasons = [None, ZERO_VARIANCE, None, NO_SCORED_ROW, None]
    full = select_groups(reasons, 2)
    assert (full.kept, full.fillers, full.short) == ([0, 2], [], 0)
    assert full.dropped == {1: ZERO_VARIANCE, 3: NO_SCORED_ROW, 4: SURPLUS}
    short = select_groups(reasons, 4)
    assert (short.kept, short.fillers, short.batch) == ([0, 2, 4], [1], [0, 2, 4, 1])
    assert short.dropped == {3: NO_SCORED_ROW}


def test_refill_prompts_are_a_pure_function_of_seed_step_and_round():
    first = refill_indices(10, 4, seed=0, step=3, round_index=1, exclude=set())
    assert first == refill_indices(10, 4, seed=0, step=3, round_index=1, exclude=set())  # resume, other processes
    assert len(set(first)) == 4
    assert first != refill_indices(10, 4, seed=0, step=3, round_index=2, exclude=set())
    assert first != refill_indices(10, 4, seed=0, step=4, round_index=1, exclude=set())
    # prompts the step already sampled come last: only 2 unseen are left, so 2 seen ones repeat
    drawn = refill_indices(10, 4, seed=0, step=3, round_index=1, exclude=set(range(8)))
    assert sorted(drawn[:2]) == [8, 9] and set(drawn[2:]) <= set(range(8))
    assert sorted(refill_indices(3, 5, seed=0, step=0, round_index=1, exclude=set())[:3]) == [0, 1, 2]


def overrides(run_dir: Path, *extra: str) -> list[str]:
    return [
        f"run.output_dir={run_dir}",
        "data.synthetic.num_questions=16",
        f"rollout.num_generations={G}",
        "rollout.max_completion_length=8",
        f"trainer.per_device_train_batch_size={PROMPTS * G}",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.learning_rate=1e-3",
        "trainer.loss_type=grpo",
        MIXED,
        "rollout.dynamic_sampling.enabled=true",
        "rollout.dynamic_sampling.max_extra_rounds=3",
        *extra,
    ]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_metrics(run_dir: Path) -> list[dict]:
    return [m for m in jsonl(run_dir / "metrics.jsonl") if "reward" in m]


@pytest.fixture(scope="module")
def ds_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dynamic_sampling") / "run"
    train(load_recipe(None, overrides(run_dir)))
    return run_dir


@pytest.mark.slow
def test_only_groups_with_reward_variance_reach_the_update(ds_run):
    records = jsonl(ds_run / "rollouts.jsonl")
    metrics = step_metrics(ds_run)
    assert len(metrics) == 4
    dropped_somewhere = False
    for step, m in enumerate(metrics, start=1):
        rows = [r for r in records if r["step"] == step]
        groups = collections.defaultdict(list)
        for r in rows:
            groups[(r["round"], r["prompt_id"])].append(r)
        assert all(len(g) == G for g in groups.values())
        # every generated group is in the log, once: the ones trained on and the ones dropped
        assert len(groups) == m["dynamic_sampling/groups_generated"]
        rounds = 1 + max(r["round"] for r in rows)
        assert m["dynamic_sampling/rounds"] == rounds and m["dynamic_sampling/groups_generated"] == PROMPTS * rounds
        trained = [g for g in groups.values() if g[0]["dropped"] is None]
        fillers = [
            g for g in groups.values() if g[0]["dropped"] and g[0]["dropped"].startswith("zero reward variance (")
        ]
        assert len(trained) == m["dynamic_sampling/groups_kept"]
        assert len(trained) + len(fillers) == PROMPTS  # the step's batch keeps its size
        for group in trained:
            assert len({r["R_total"] for r in group}) > 1 and all(r["advantage"] != 0 for r in group)
            assert int(group[0]["prompt_id"][-1]) % 2 == 1  # even ids never carry signal
        for group in groups.values():
            if group[0]["dropped"] in (ZERO_VARIANCE, SURPLUS, NO_SCORED_ROW):
                dropped_somewhere = True
                assert all(r["advantage"] is None for r in group)
        assert m["dynamic_sampling/filler_groups"] == len(fillers)
        if not fillers:
            assert m["advantage/nonzero_frac"] == 1.0
    assert dropped_somewhere
    page = (ds_run / "report" / "rollouts.html").read_text()
    assert "dropped by dynamic sampling" in page and "data-dropped='1'" in page


@pytest.mark.slow
def test_resume_with_dynamic_sampling_equals_the_uninterrupted_run(ds_run, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run(
        [sys.executable, str(TESTS / "helpers" / "kill_run.py"), "after_save", "2", *overrides(run_dir)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    train(load_recipe(None, overrides(run_dir)))

    def stable(run):
        return [
            {k: v for k, v in m.items() if not k.startswith("time/") and k != "step_time"} for m in step_metrics(run)
        ]

    assert stable(run_dir) == stable(ds_run)
    a, b = (load_file(next((d / "final_model").glob("*.safetensors"))) for d in (run_dir, ds_run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    texts = [(d / "rollouts.jsonl").read_text() for d in (ds_run, run_dir)]
    assert texts[0] == texts[1].replace(str(run_dir), str(ds_run))


@pytest.mark.slow
def test_two_processes_with_dynamic_sampling_equal_one(tmp_path):
    sys.path.insert(0, str(TESTS))
    from test_scale_out import final_weights, launch

    mixed = 'rewards.terms=[{name: "mixed_signal:half_informative", label: mixed}]'
    extra = (mixed, "rollout.dynamic_sampling.enabled=true", "rollout.dynamic_sampling.max_extra_rounds=2")
    launch(tmp_path / "two", 2, tmp_path / "two_probe.jsonl", *extra)
    launch(tmp_path / "one", 1, tmp_path / "one_probe.jsonl", *extra)

    def log(run):
        keys = ("step", "round", "prompt_id", "completion", "R_total", "advantage", "dropped")
        return sorted(tuple(str(r[k]) for k in keys) for r in jsonl(run / "rollouts.jsonl"))

    assert log(tmp_path / "two") == log(tmp_path / "one")
    assert any(r["dropped"] for r in jsonl(tmp_path / "one" / "rollouts.jsonl"))
    two, one = step_metrics(tmp_path / "two"), step_metrics(tmp_path / "one")
    for a, b in zip(two, one, strict=True):
        for key in ("reward", "dynamic_sampling/groups_generated", "dynamic_sampling/groups_kept"):
            assert a[key] == b[key], key
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    a, b = final_weights(tmp_path / "two"), final_weights(tmp_path / "one")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_a_step_without_any_informative_group_trains_on_nothing(tmp_path):
    """The random model writes no answer tags: format is 0 everywhere, every group has zero variance, and with no
    refill round the step is all fillers, outside the loss. It runs (no backward error) and moves no weight."""
    run_dir = tmp_path / "run"
    recipe = load_recipe(
        None,
        [
            *overrides(run_dir, "trainer.max_steps=1", "rollout.dynamic_sampling.max_extra_rounds=0"),
            "rewards.terms=[{name: format, weight: 1.0}]",
        ],
    )
    setup = build_training(recipe)
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    setup.trainer.train()
    (row,) = step_metrics(run_dir)
    assert row["dynamic_sampling/groups_kept"] == 0 and row["dynamic_sampling/filler_groups"] == PROMPTS
    assert row["grad_norm"] == 0.0
    assert all(torch.equal(p, before[n]) for n, p in setup.model.named_parameters())
