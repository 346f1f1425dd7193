"""A 2-step ``grpo-audio train`` on the tiny model writes a complete run directory."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_audio.cli import main
from grpo_audio.model import CovoAudioForConditionalGeneration


@pytest.mark.slow
def test_two_step_train_writes_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--set",
        f"run.output_dir={run}",
        "--set",
        "data.synthetic.num_questions=8",
        "--set",
        "rollout.max_completion_length=12",
        "--set",
        "trainer.max_steps=2",
    ]
    assert main(argv) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 2
    for name in ("recipe.yaml", "command.txt", "prompt.txt", "data/manifest.jsonl"):
        assert (run / name).is_file(), name
    assert "<|cAUDIO|>" in (run / "prompt.txt").read_text()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:  # every reward term is logged on its own, next to R_total
        for key in (
            "rewards/accuracy/mean",
            "rewards/format/mean",
            "rewards/R_total/mean",
            "rewards/accuracy/weighted_mean",
            "frac_reward_zero_std",
        ):
            assert key in m, key
    out = capsys.readouterr().out
    assert "step 2/2 | R_total" in out and "accuracy" in out
    # the run ends with its report written and its path printed
    assert (run / "report" / "index.html").is_file() and (run / "report" / "overview.png").is_file()
    assert f"report (curves and rollout browser) in {run / 'report' / 'index.html'}" in out
    # the final model is in the released Covo-Audio layout, and loads back as a pretrained source
    from safetensors import safe_open

    with safe_open(str(run / "final_model" / "model.safetensors"), "pt") as fh:
        names = list(fh.keys())
    assert any(n.startswith("llm.model.") for n in names) and "llm.lm_head.weight" in names
    assert any(n.startswith("audio_adapter.downsample_layers.2.") for n in names)
    from grpo_audio.model.build import build_tokenizer_and_model
    from grpo_audio.recipe import load_recipe

    reloaded = load_recipe(None, ["model.source=pretrained", f"model.path={run / 'final_model'}"])
    _, model = build_tokenizer_and_model(reloaded.model, reloaded.run.seed)
    assert isinstance(model, CovoAudioForConditionalGeneration) and model.config.model_type == "covo_audio"
    assert not list(run.glob("final_model.tmp*"))


@pytest.mark.slow
def test_lora_adapts_only_the_backbone_and_merges_back(tiny_recipe):
    from grpo_audio.train.run import build_training

    setup = build_training(tiny_recipe("model.lora={r: 4, alpha: 8}", "trainer.max_steps=2"))
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    setup.trainer.train()
    model = setup.trainer.model
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n and "language_model" in n for n in lora)
    assert not any("lm_head" in n or "encoder" in n for n in lora)
    # what a sharded run (FSDP, ZeRO-3) does with the gathered full state dict: load it into a fresh LoRA-wrapped
    # copy of the starting model, so the final model it writes equals the one trained
    from grpo_audio.data.vocabulary import vocabulary_texts
    from grpo_audio.model.build import model_holding

    recipe = tiny_recipe("model.lora={r: 4, alpha: 8}", "trainer.max_steps=2")
    with torch.no_grad():  # an adapter far from its zero start, so that merging it changes the weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copy = (
        model_holding(recipe.model, recipe.run.seed, vocabulary_texts(setup.rows, setup.template), state)
        .merge_and_unload()
        .state_dict()
    )
    merged = model.merge_and_unload().state_dict()
    assert torch.equal(merged["model.encoder.conv1.weight"], before["model.encoder.conv1.weight"])
    assert copy.keys() == merged.keys() and all(torch.equal(copy[k], merged[k]) for k in merged)
    q = "model.language_model.layers.0.self_attn.q_proj"
    assert not torch.equal(merged[f"{q}.weight"], before[f"{q}.base_layer.weight"])  # the LoRA update was merged


def test_rerun_into_a_foreign_directory_is_refused(tmp_path, capsys):
    foreign = tmp_path / "not_a_run"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    assert main(["train", "--set", f"run.output_dir={foreign}"]) == 2
    assert "was not written by grpo-audio" in capsys.readouterr().err
    assert (foreign / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_a_saved_final_model_is_a_pretrained_source(tiny_recipe):
    from grpo_audio.data.prompting import load_template
    from grpo_audio.data.vocabulary import vocabulary_texts
    from grpo_audio.model.build import build_tokenizer_and_model
    from grpo_audio.train.run_dir import save_model_atomic

    setup_recipe = tiny_recipe()
    template = load_template("audio_cot_v1")
    tokenizer, model = build_tokenizer_and_model(
        setup_recipe.model, setup_recipe.run.seed, vocabulary_texts([], template)
    )
    target = setup_recipe.run.output_dir + "_model"
    save_model_atomic(model, tokenizer, Path(target))
    recipe = tiny_recipe("model.source=pretrained", f"model.path={target}")
    tokenizer2, model2 = build_tokenizer_and_model(recipe.model, recipe.run.seed, vocabulary_texts([], template))
    assert tokenizer2.get_vocab() == tokenizer.get_vocab()
    a, b = model.state_dict(), model2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model2.config.audio_placeholder_token_id == tokenizer.convert_tokens_to_ids("<|cAUDIO|>")


@pytest.mark.slow
def test_kl_to_a_reference_model_built_from_the_initial_weights(tiny_recipe):
    """beta > 0 without LoRA: TRL rebuilds the reference from the policy's directory (the saved initial model)
    and its log-prob pass gets the audio too (it would raise otherwise)."""
    from grpo_audio.train.run import build_training

    setup = build_training(tiny_recipe("trainer.beta=0.04", "trainer.max_steps=2"))
    assert setup.trainer.ref_model is not None
    setup.trainer.train()
    logged = [m for m in setup.trainer.state.log_history if "kl" in m]
    assert len(logged) == 2 and all(m["kl"] >= 0 for m in logged)
    ref = setup.trainer.ref_model.state_dict()
    initial = load_file(setup.run_dir / "initial_model" / "model.safetensors")
    assert all(torch.equal(ref[k], v) for k, v in initial.items())


@pytest.mark.parametrize(
    "name, body, problem",
    [
        ("raises", "raise KeyError('gold')", "gold"),
        ("wrong_count", "return [1.0]", "1 value"),
        ("nan", "return [float('nan')] * len(completions)", "nan"),
    ],
)
def test_a_broken_plugin_reward_stops_training_naming_it(tiny_recipe, tmp_path, monkeypatch, name, body, problem):
    """A user's reward, plugged in by import path, that raises or returns the wrong count or NaN stops the run."""
    import rewards
    from grpo_audio.train.run import build_training

    module = tmp_path / f"broken_{name}.py"  # one module name per case: imports are cached
    module.write_text(
        "from rewards import register_reward\n\n"
        "def score(completions, samples, context):\n"
        f"    {body}\n\n"
        "score.batched = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    setup = build_training(
        tiny_recipe(f"rewards.terms=[{{name: accuracy}}, {{name: 'broken_{name}:score', label: broken}}]")
    )
    with pytest.raises((rewards.registry.RewardError, rewards.registry.RewardOutputError)) as info:
        setup.trainer.train()
    message = str(info.value) + str(info.value.__cause__ or "")
    assert f"broken_{name}:score" in message and problem in message.lower()
