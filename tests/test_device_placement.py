"""Device placement on the way to an accelerator, checked on the CPU: what runs before the Trainer moves the model
(the cold start) runs on the trainer's device, not on the host where the model was built."""

import torch
from helpers.tiny_model import tiny_model, tiny_tokenizer

from grpo_audio.train import run as training


def record_devices(monkeypatch) -> dict:
    """Replace the cold start by a probe noting where the model's weights are."""
    seen = {}

    def coldstart(model, *args, **kwargs):
        seen["coldstart"] = next(model.parameters()).device
        return []

    monkeypatch.setattr(training, "run_coldstart", coldstart)
    monkeypatch.setattr(training, "save_model_atomic", lambda *args: None)
    return seen


def test_the_cold_start_runs_on_the_trainers_device(tiny_recipe, monkeypatch, tmp_path):
    recipe = tiny_recipe("coldstart.steps=2")
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, recipe.model.tiny)
    seen = record_devices(monkeypatch)
    # "meta" stands in for "cuda": a device other than the host's, reachable without a GPU
    meta = torch.device("meta")
    training.make_starting_point(recipe, tmp_path, model, tokenizer, [], None, meta)
    assert seen == {"coldstart": meta}


def test_nothing_moves_when_nothing_runs_before_the_trainer(tiny_recipe, monkeypatch, tmp_path):
    recipe = tiny_recipe()
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, recipe.model.tiny)
    seen = record_devices(monkeypatch)
    training.make_starting_point(recipe, tmp_path, model, tokenizer, [], None, torch.device("meta"))
    assert seen == {} and next(model.parameters()).device.type == "cpu"  # the Trainer places it later
