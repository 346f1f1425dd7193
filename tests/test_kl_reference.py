"""The KL term's reference is scored so that it stays finite: under the text-only mask and the temperature, but
without a top-k/top-p cut of its own. A token the policy sampled inside its nucleus but outside the reference's
would otherwise get the reference log-prob NEG (-1e9) and a KL of about 1e9 (measured before: 2.6e7 to 5.3e7 from
step 2 of the demo with top_p 0.8 and beta 0.04)."""

import json
from pathlib import Path

import pytest
import torch

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.model.sampling import NEG
from grpo_audio.recipe import load_recipe
from grpo_audio.train.run import build_training, train

G = 4


def recipe(run_dir: Path, *extra: str):
    return load_recipe(
        None,
        [
            f"run.output_dir={run_dir}",
            "data.synthetic.num_questions=8",
            f"rollout.num_generations={G}",
            "rollout.max_completion_length=12",
            "trainer.per_device_train_batch_size=8",
            "trainer.max_steps=3",
            "trainer.learning_rate=5e-3",
            "trainer.beta=0.04",
            *extra,
        ],
    )


def test_the_reference_pass_scores_the_untruncated_distribution(tmp_path):
    setup = build_training(recipe(tmp_path / "run", "rollout.top_p=0.3", "rollout.top_k=5"))
    trainer = setup.trainer
    assert (trainer.reference_sampling.top_p, trainer.reference_sampling.top_k) == (1.0, 0)
    assert trainer.reference_sampling.temperature == trainer.sampling.temperature
    output = trainer._generate_and_score_completions([setup.dataset[i] for i in range(2) for _ in range(G)])
    mask = output["completion_mask"].bool()
    ref = output["ref_per_token_logps"][mask]
    assert ref.min().item() > NEG / 1e6  # finite: no token scored as removed
    # the policy's passes keep the cut: at step 0 policy and reference are the same weights, so the policy's
    # log-prob is the reference's renormalised over the nucleus, strictly larger (the cut removes mass)
    trainer._current_audio = AudioRows.from_inputs(output)
    policy, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1),
        torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1),
        output["completion_ids"].size(1),
    )
    trainer._current_audio = None
    assert (policy[mask] > ref + 1e-6).all()


def max_kl(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max(r["kl"] for r in rows if "kl" in r)


@pytest.mark.slow
def test_a_nucleus_cut_keeps_the_kl_within_the_range_of_the_untruncated_run(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    common = ["trainer.max_steps=4", "trainer.beta=0.04", "trainer.save_steps=100"]
    train(load_recipe(demo, [f"run.output_dir={tmp_path / 'cut'}", "rollout.top_p=0.8", *common]))
    train(load_recipe(demo, [f"run.output_dir={tmp_path / 'full'}", *common]))
    cut, full = max_kl(tmp_path / "cut"), max_kl(tmp_path / "full")
    assert full > 0  # the policy moved: the test can see a KL
    # the policy's nucleus renormalisation adds at most exp(d) - d - 1 with d = log(nucleus mass) >= log 0.8 per
    # token (0.023); the rest is the drift both runs share
    assert cut < full + 0.05 and cut < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["covo_audio", "qwen2_audio"])
def test_full_fine_tuning_of_a_pretrained_model_keeps_a_frozen_copy_as_the_kl_reference(tmp_path, family):
    """beta > 0 without LoRA (R1-AQA's setting) on a pretrained directory: the trainer keeps a frozen copy of the
    starting point as the KL reference (TRL could not load one from a released Covo-Audio directory, nor as our
    Qwen2-Audio class). The KL is 0 while the policy is the starting point and grows once the policy has moved."""
    first = tmp_path / "first"
    train(recipe(first, f"model.family={family}", "trainer.max_steps=1", "trainer.beta=0"))
    second = tmp_path / "second"
    mixed = 'rewards.terms=[{name: "helpers.mixed_signal:half_informative"}]'  # groups with reward variance
    pretrained = ["model.source=pretrained", f"model.path={first / 'final_model'}", "model.lora=null"]
    train(recipe(second, *pretrained, mixed, "trainer.learning_rate=5e-2"))
    steps = [m for m in map(json.loads, (second / "metrics.jsonl").read_text().splitlines()) if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert abs(steps[0]["kl"]) < 1e-7  # step 1 scores the starting point against itself
    moved = steps[0]["grad_norm"] > 0 or steps[1]["grad_norm"] > 0
    assert moved and steps[2]["kl"] > 1e-6  # the policy moved away from the frozen copy
