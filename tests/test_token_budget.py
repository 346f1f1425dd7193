"""Token-budget micro-batches (``trainer.max_tokens_per_microbatch``, ``grpo_audio.train.token_budget``): rows
packed by token count with their padding cut give the fixed-size path's log-probs, loss and gradient."""

import pytest
import torch

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.recipe import RecipeError
from grpo_audio.train import run as training
from grpo_audio.train.token_budget import (
    fixed_chunks,
    pack_rows,
    pack_tokens,
    padding_fraction,
    row_spans,
    unpack_tokens,
)


def layout(prompt_lengths, completion_lengths, prompt_width, completion_width):
    """An attention mask laid out as TRL's: left-padded prompts, right-padded completions."""
    rows = []
    for p, c in zip(prompt_lengths, completion_lengths, strict=True):
        prompt = [0] * (prompt_width - p) + [1] * p
        completion = [1] * c + [0] * (completion_width - c)
        rows.append(prompt + completion)
    return torch.tensor(rows)


def test_packing_covers_every_row_once_within_the_budget():
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, 30, (40,), generator=gen).tolist()
    completions = torch.randint(0, 200, (40,), generator=gen).tolist()
    mask = layout(prompts, completions, 30, 200)
    budget = 600
    chunks = pack_rows(mask, 30, budget)
    assert sorted(torch.cat([c.index for c in chunks]).tolist()) == list(range(40))
    first, last = row_spans(mask, 30)
    for chunk in chunks:
        assert chunk.positions <= budget or len(chunk.index) == 1
        assert chunk.start == int(first[chunk.index].min()) and chunk.end == int(last[chunk.index].max())
        assert chunk.end > 30  # at least one completion column, even for an empty completion
    # the packed layout wastes less than TRL's fixed chunks of the same rows
    fixed = fixed_chunks(40, 230, 4)
    assert padding_fraction(mask, chunks) < padding_fraction(mask, fixed)
    assert padding_fraction(mask, fixed) == pytest.approx(1 - mask.sum().item() / (40 * 230))


def test_a_row_wider_than_the_budget_goes_alone():
    mask = layout([10, 10, 10], [5, 100, 6], 10, 100)
    chunks = pack_rows(mask, 10, 50)
    # rows 0 and 2 (spans 15 and 16: 2 x 16 <= 50) share a chunk; row 1 (span 110) is alone, over the budget
    assert [c.index.tolist() for c in chunks] == [[0, 2], [1]]
    assert [(c.start, c.end) for c in chunks] == [(0, 16), (0, 110)]


def test_the_budget_is_checked_by_the_recipe(tiny_recipe):
    with pytest.raises(RecipeError, match=r"trainer.max_tokens_per_microbatch"):
        tiny_recipe("trainer.max_tokens_per_microbatch=0")
    with pytest.raises(
        RecipeError, match=r"unknown key 'trainer.max_tokens_per_microbach'.*max_tokens_per_microbatch"
    ):
        tiny_recipe("trainer.max_tokens_per_microbach=100")


def varied_batch(trainer, dataset, g):
    """A generation batch whose completions end at very different lengths (the tiny model rarely stops by itself:
    the masks are cut at random lengths, as EOS would cut them)."""
    inputs = trainer._generate_and_score_completions([dataset[i] for i in range(4) for _ in range(g)])
    rows, width = inputs["completion_ids"].shape
    lengths = torch.randint(0, width + 1, (rows,), generator=torch.Generator().manual_seed(3))
    keep = torch.arange(width)[None, :] < lengths[:, None]
    inputs["completion_mask"] = inputs["completion_mask"] * keep
    inputs["advantages"] = torch.linspace(-1, 1, rows)  # a signal whatever the rewards
    return inputs


def loss_and_gradient(trainer, inputs):
    model = trainer.model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_packed_passes_give_the_fixed_paths_logprobs_loss_and_gradient(tiny_recipe):
    """Rows packed by a token budget, and rows laid end to end without padding (``trainer.padding_free``), with
    either chunking: the same log-probs, entropies, loss and gradient as TRL's fixed-size chunks."""
    recipe = tiny_recipe("rollout.max_completion_length=24", "trainer.per_device_train_batch_size=16")
    setup = training.build_training(recipe)
    trainer = setup.trainer
    inputs = varied_batch(trainer, setup.dataset, recipe.rollout.num_generations)
    prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    keep = completion_ids.size(1)
    mask = inputs["completion_mask"].bool()
    tokens_per_row = int(attention_mask.sum()) // input_ids.size(0)

    results = {}
    settings = {  # (token budget, padding-free); budget None: chunks of per_device_train_batch_size rows
        "fixed": (None, False),
        "budget": (3 * input_ids.size(1), False),  # several chunks, padding columns cut
        "padding-free": (None, True),  # one packed row of every row's tokens
        "padding-free budget": (3 * tokens_per_row, True),  # several packed rows
    }
    for name, (budget, padding_free) in settings.items():
        trainer.max_tokens_per_microbatch, trainer.padding_free = budget, padding_free
        trainer._current_audio = AudioRows.from_inputs(inputs)
        with torch.no_grad():
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, input_ids, attention_mask, keep, compute_entropy=True
            )
        trainer._current_audio = None
        trainer._padding = [0, 0, 0]
        loss, grads = loss_and_gradient(trainer, inputs)
        results[name] = (logps, entropies, loss, grads, list(trainer._padding))

    fixed = results.pop("fixed")
    assert len(fixed[3]) > 0
    for name, packed in results.items():
        torch.testing.assert_close(packed[0][mask], fixed[0][mask], atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(packed[1][mask], fixed[1][mask], atol=1e-5, rtol=0, msg=name)
        assert torch.all(packed[0][~mask] == 0), name  # cut positions hold zeros, as TRL's padded ones
        torch.testing.assert_close(packed[2], fixed[2], atol=1e-6, rtol=1e-5, msg=name)
        assert fixed[3].keys() == packed[3].keys(), name
        for param in fixed[3]:
            torch.testing.assert_close(packed[3][param], fixed[3][param], atol=1e-6, rtol=1e-4, msg=f"{name} {param}")
        tokens, covered, chunks = packed[4]
        assert tokens == fixed[4][0] and covered < fixed[4][1], name  # less padding for the same tokens
    assert results["budget"][4][2] > 1 and results["padding-free budget"][4][2] > 1
    for name in ("padding-free", "padding-free budget"):
        tokens, covered, _ = results[name][4]
        assert covered == tokens, name  # no padding at all


def test_packed_tokens_restart_positions_and_unpack_onto_the_grid():
    mask = layout([2, 3], [2, 0], 3, 2)  # row 0: _ p p c c ; row 1: p p p _ _
    ids = torch.arange(10).reshape(2, 5)
    labels = ids.masked_fill(mask == 0, -100)
    flat_ids, flat_labels, positions, lengths = pack_tokens(ids, mask, labels)
    assert flat_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]] and flat_labels.tolist() == flat_ids.tolist()
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2]] and lengths.tolist() == [4, 3]
    # outputs for packed tokens 1..6 go back to the columns those tokens came from, less column 0
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
    assert unpack_tokens(values, mask).tolist() == [[0.0, 10.0, 20.0, 30.0], [50.0, 60.0, 0.0, 0.0]]


def test_padding_free_budget_counts_tokens():
    mask = layout([10, 10, 10], [5, 100, 6], 10, 100)
    chunks = pack_rows(mask, 10, 40, padding_free=True)
    # tokens 15, 16 (one chunk of 31 <= 40) and 110 alone
    assert [(c.index.tolist(), c.positions) for c in chunks] == [([0, 2], 31), ([1], 110)]
    assert padding_fraction(mask, chunks) == 0.0


def test_padding_free_is_checked_by_the_recipe(tiny_recipe):
    assert tiny_recipe("trainer.padding_free=true").trainer["padding_free"] is True
    with pytest.raises(RecipeError, match=r"trainer.padding_free"):
        tiny_recipe("trainer.padding_free=sometimes")
