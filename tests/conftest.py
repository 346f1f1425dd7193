"""Fixtures every test module may use: the tiny model and tokenizer (``tokenizer``, ``model``) and the recipe of
one tiny run (``tiny_recipe``).

Tiers, by marker (declared in pyproject.toml; ``--strict-markers`` refuses any other): ``pytest -m "not slow"`` is
the fast tier (about a minute on two idle cores); ``slow`` tests take seconds to minutes each (training runs of
several steps, multi-process launches, the bench scripts, vLLM: every ``vllm`` test is ``slow`` too); ``gpu``
tests skip without a CUDA GPU, ``browser`` tests without Chromium. Plain ``pytest`` runs every tier.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from grpo_audio.recipe import load_recipe


@pytest.fixture(scope="module")
def tokenizer():
    """The unit tests' tiny tokenizer (tests/helpers/tiny_model.py), one per test module."""
    from helpers.tiny_model import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """The unit tests' tiny Covo-Audio (default widths, seed 0, eval mode) for ``tokenizer``, one per test module:
    a module may change it, no other module sees that."""
    from helpers.tiny_model import tiny_model

    return tiny_model(tokenizer)


@pytest.fixture
def tiny_recipe(tmp_path):
    """A fast recipe (8 synthetic questions, G=4, short completions) writing into tmp_path; extra overrides apply."""

    def make(*overrides: str):
        return load_recipe(
            None,
            [
                f"run.output_dir={tmp_path / 'run'}",
                "data.synthetic.num_questions=8",
                "rollout.num_generations=4",
                "rollout.max_completion_length=12",
                "trainer.per_device_train_batch_size=8",
                "trainer.max_steps=2",
                "trainer.learning_rate=1e-3",
                *overrides,
            ],
        )

    return make


def pytest_collection_modifyitems(config, items):
    """A ``vllm`` test without the ``slow`` marker would put an engine start into the fast tier: refuse to run."""
    unmarked = [i.nodeid for i in items if i.get_closest_marker("vllm") and not i.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("marked vllm but not slow: " + ", ".join(unmarked))
