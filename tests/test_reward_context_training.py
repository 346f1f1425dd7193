"""In training, rewards see each completion's length, finish reason and the run's limit (the trainer wires them)."""

from grpo_audio.train.run import build_training

G = 4


def test_overlong_scores_the_trainers_rollouts_by_their_lengths(tiny_recipe):
    limit, cache = 12, 4
    setup = build_training(
        tiny_recipe(
            f"rollout.max_completion_length={limit}",
            "rewards.terms=[{name: 'helpers.context_probe:cut_at_limit', label: cut}, "
            f"{{name: overlong, weight: 1.0, options: {{l_cache: {cache}}}}}]",
        )
    )
    trainer = setup.trainer
    trainer._generate_and_score_completions([setup.dataset[i] for i in range(2) for _ in range(G)])
    result, breakdown = trainer.last_rollout, trainer.last_breakdown
    for ids, reason, value in zip(
        result.completion_ids, result.finish_reasons, breakdown.terms["overlong"], strict=True
    ):
        # l_max is the run's limit (from the trainer); the engine's finish reason is the one the rewards saw
        expected = 0.0 if len(ids) <= limit - cache else ((limit - cache) - len(ids)) / cache
        assert value == expected
        assert reason == ("length" if ids[-1] not in trainer.eos_token_ids else "stop")
    # the finish reasons the rewards saw (from the trainer's stop ids) are the engine's
    assert breakdown.terms["cut"] == [1.0 if r == "length" else 0.0 for r in result.finish_reasons]
    assert any(reason == "length" for reason in result.finish_reasons)  # the random model runs to the limit
