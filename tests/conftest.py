import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from grpo_audio.recipe import load_recipe  # noqa: E402


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
