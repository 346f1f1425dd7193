"""Device placement on the way to an accelerator, checked on the CPU: what runs before the Trainer moves the model
(the cold start, the held-out score) runs on the trainer's device, not on the host where the model was built."""

import torch

from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus
from grpo_audio.train import run as training


def tiny_model(recipe):
    tokenizer = build_tiny_tokenizer(tiny_tokenizer_corpus(["a tone"]), 300)
    return tokenizer, build_tiny_model(recipe.model.tiny, tokenizer, 0)


def record_devices(monkeypatch) -> dict:
    """Replace the cold start and the held-out score by probes noting where the model's weights are."""
    seen = {}

    def coldstart(model, *args, **kwargs):
        seen["coldstart"] = next(model.parameters()).device
        return []

    def heldout(recipe, model, *args):
        seen["heldout"] = next(model.parameters()).device

    monkeypatch.setattr(training, "run_coldstart", coldstart)
    monkeypatch.setattr(training, "measure_heldout", heldout)
    monkeypatch.setattr(training, "save_model_atomic", lambda *args: None)
    return seen


def test_cold_start_and_heldout_run_on_the_trainers_device(tiny_recipe, monkeypatch, tmp_path):
    recipe = tiny_recipe("coldstart.steps=2")
    tokenizer, model = tiny_model(recipe)
    seen = record_devices(monkeypatch)
    # "meta" stands in for "cuda": a device other than the host's, reachable without a GPU
    meta = torch.device("meta")
    training.prepare_starting_point(recipe, tmp_path, model, tokenizer, [], None, [{"id": "q"}], {}, meta)
    assert seen == {"coldstart": meta, "heldout": meta}


def test_nothing_moves_when_nothing_runs_before_the_trainer(tiny_recipe, monkeypatch, tmp_path):
    recipe = tiny_recipe()
    tokenizer, model = tiny_model(recipe)
    record_devices(monkeypatch)
    training.prepare_starting_point(recipe, tmp_path, model, tokenizer, [], None, [], {}, torch.device("meta"))
    assert next(model.parameters()).device.type == "cpu"  # the Trainer (or a sharding plugin) places it later
