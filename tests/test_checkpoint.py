"""Released-format checkpoints: write, read back, train, LoRA merge, the full-size layout, bad directories, crashes."""

import copy
import json
import shutil

import pytest
import torch
from helpers.tiny_model import tiny_model, tiny_tokenizer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import grpo_audio.model.checkpoint_load as checkpoint
import grpo_audio.model.checkpoint_save as checkpoint_save
from grpo_audio.model.checkpoint_format import build_covo_on_meta, our_name, released_covo_config, released_name
from grpo_audio.model.checkpoint_load import CheckpointError, load_covo_checkpoint
from grpo_audio.model.checkpoint_save import save_covo_checkpoint
from grpo_audio.model.tokenizer import AUDIO_PLACEHOLDER, AUDIO_SPECIAL_TOKENS

SHARD = "60KB"  # the tiny model is ~0.4 MB in float32: several shards


@pytest.fixture(scope="module")
def saved(model, tokenizer, tmp_path_factory):
    """A tiny checkpoint in the released format; tests that damage it work on a copy (``copy_of``)."""
    return save_covo_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "covo", max_shard_size=SHARD)


@pytest.fixture
def copy_of(saved, tmp_path):
    def make():
        return shutil.copytree(saved, tmp_path / "copy")

    return make


def _stored_names(directory):
    names = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            names.update(dict.fromkeys(f.keys(), shard.name))
    return names


def _shard(directory, i):
    return sorted(directory.glob("model-*.safetensors"))[i - 1]


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def _inputs(model, n_audio=5):
    p = model.config.audio_placeholder_token_id
    ids = torch.tensor([[1, 2, *([p] * n_audio), 5, 6, 7]])
    audio = torch.randn(1, n_audio, model.config.llm_config.hidden_size, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "audio_embeds": audio}


# --- the released layout on disk --------------------------------------------------------------------------------


def test_save_writes_the_released_layout(saved, model, tokenizer):
    shards = sorted(p.name for p in saved.glob("*.safetensors"))
    assert len(shards) >= 2
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    index = json.loads((saved / "model.safetensors.index.json").read_text())
    on_disk = _stored_names(saved)
    assert index["weight_map"] == on_disk
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    released_prefixes = ("llm.model.", "llm.lm_head.", "encoder.", "audio_adapter.")
    assert all(n.startswith(released_prefixes) for n in on_disk) and "llm.lm_head.weight" in on_disk
    for i in range(3):
        for part in ("conv1d", "linear1", "linear2"):
            for kind in ("weight", "bias"):
                assert f"audio_adapter.downsample_layers.{i}.{part}.{kind}" in on_disk
    for name in (
        "llm.model.embed_tokens.weight",
        "llm.model.norm.weight",
        "llm.model.layers.1.mlp.up_proj.weight",
        "encoder.conv1.weight",
        "encoder.embed_positions.weight",
        "encoder.layer_norm.weight",
    ):
        assert name in on_disk, name
    assert len(on_disk) == len(model.state_dict())

    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "covo_audio" and config["dtype"] == "float32"
    assert config["llm_config"]["model_type"] == "qwen2" and config["encoder_config"]["model_type"] == "whisper"
    # as the released code writes them: sub-config tags are model types, architectures the released class
    assert config["_llm_config_type"] == "qwen2" and config["_encoder_config_type"] == "whisper"
    assert config["architectures"] == ["CovoAudioForCausalLM"]
    assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert config["encoder_config"]["architectures"] == ["WhisperForConditionalGeneration"]
    assert config["audio_token_index"] == len(tokenizer) and config["adapter_downsample"] == 8
    assert config["llm_config"]["rope_theta"] == 1e6  # for transformers-4 readers, beside rope_parameters
    assert config["encoder_config"]["num_mel_bins"] == 128 and config["llm_config"]["tie_word_embeddings"] is False
    assert (saved / "tokenizer.json").is_file() and (saved / "tokenizer_config.json").is_file()
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no .tmp-/.old- leftovers


def test_round_trip_gives_identical_weights_names_and_tokenizer(saved, model, tokenizer):
    loaded, loaded_tokenizer = load_covo_checkpoint(saved)
    _assert_same_state(loaded, model)
    assert not loaded.training and {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded.config.audio_placeholder_token_id == tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
    llm_config = loaded.config.to_dict()["llm_config"]
    assert llm_config.pop("architectures") == ["Qwen2ForCausalLM"]  # written as the release has it
    assert llm_config == {k: v for k, v in model.config.to_dict()["llm_config"].items() if k != "architectures"}
    assert not loaded.model.encoder.embed_positions.weight.requires_grad  # Whisper keeps its positions frozen
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_inputs(loaded)).logits, model(**_inputs(model)).logits, rtol=0, atol=0)


def test_load_casts_to_the_requested_dtype(saved):
    loaded, _ = load_covo_checkpoint(saved, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.model.language_model.rotary_emb.inv_freq.dtype == torch.float32  # buffers built, not loaded


def test_bfloat16_model_round_trips_bit_exact(model, tokenizer, tmp_path):
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    save_covo_checkpoint(bf16, tokenizer, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in (tmp_path / "bf16").glob("*.safetensors")) == ["model.safetensors"]  # one shard
    reloaded, _ = load_covo_checkpoint(tmp_path / "bf16")
    _assert_same_state(reloaded, bf16)
    assert reloaded.config.dtype == torch.bfloat16


def test_save_refuses_a_tokenizer_that_does_not_match_the_model(model, tmp_path):
    other = tiny_tokenizer(260)  # fewer text entries: a different audio_token_index
    with pytest.raises(CheckpointError, match=r"tokenizer \(len \d+, <\|cAUDIO\|> \d+\) does not match the model"):
        save_covo_checkpoint(model, other, tmp_path / "mismatch")
    assert not (tmp_path / "mismatch").exists()


def test_train_a_step_save_and_reload(saved, tmp_path):
    trained, tokenizer = load_covo_checkpoint(saved)
    trained.train()
    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=1e-3)
    mels = torch.randn(1, 1, 128, 3000, generator=torch.Generator().manual_seed(0))  # through encoder and adapter
    ids = _inputs(trained)["input_ids"]
    trained(input_ids=ids, input_features=mels, audio_segment_counts=torch.tensor([1])).logits.sum().backward()
    optimizer.step()
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    assert "lm_head.weight" in changed and "model.audio_adapter.downsample_layers.0.conv1d.weight" in changed

    target = shutil.copytree(saved, tmp_path / "run" / "covo")  # saving over an existing checkpoint replaces it
    save_covo_checkpoint(trained, tokenizer, target, max_shard_size=SHARD)
    reloaded, _ = load_covo_checkpoint(target)
    _assert_same_state(reloaded, trained)
    assert [p.name for p in target.parent.iterdir()] == ["covo"]


def test_lora_is_merged_into_the_saved_weights_and_the_live_model_is_untouched(saved, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_covo_checkpoint(saved)
    lora = LoraConfig(
        r=4,
        target_modules=r".*language_model\..*\.(q_proj|v_proj|down_proj)$",
        modules_to_save=["audio_adapter"],
        init_lora_weights=False,  # non-zero B: the merge must change the weights
    )
    peft_model = get_peft_model(base, lora)
    wrapper = peft_model.get_base_model().model.audio_adapter
    with torch.no_grad():  # a "trained" adapter copy, which is what must be saved
        wrapper.modules_to_save["default"].downsample_layers[0].linear1.bias.add_(1.0)
    live = {n: t.clone() for n, t in peft_model.state_dict().items()}
    with torch.no_grad():
        out_before = peft_model(**_inputs(base)).logits

    save_covo_checkpoint(peft_model, tokenizer, tmp_path / "merged", max_shard_size=SHARD)

    assert all(torch.equal(live[n], t) for n, t in peft_model.state_dict().items())  # adapters still separate
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**_inputs(base)).logits, out_before, rtol=0, atol=0)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    reloaded, _ = load_covo_checkpoint(tmp_path / "merged")
    _assert_same_state(reloaded, merged)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(reloaded.state_dict()[q], live[f"base_model.model.{q[:-7]}.base_layer.weight"])
    stored = _stored_names(tmp_path / "merged")
    assert not any("lora" in n or "base_layer" in n or "modules_to_save" in n for n in stored)
    with pytest.raises(ValueError, match="merge_lora=False"):
        save_covo_checkpoint(peft_model, tokenizer, tmp_path / "unmerged", merge_lora=False)
    assert not (tmp_path / "unmerged").exists()


# --- the full-size model ----------------------------------------------------------------------------------------


def test_full_size_config_builds_on_meta_with_released_names_and_shapes():
    model = build_covo_on_meta(released_covo_config())
    assert {p.device.type for p in model.parameters()} == {"meta"}
    shapes = {released_name(n): tuple(p.shape) for n, p in model.named_parameters()}
    assert all(our_name(released_name(n)) == n for n, _ in model.named_parameters())
    expected = {
        "llm.model.embed_tokens.weight": (168055, 3584),
        "llm.lm_head.weight": (168055, 3584),
        "llm.model.layers.27.self_attn.q_proj.weight": (3584, 3584),
        "llm.model.layers.27.self_attn.q_proj.bias": (3584,),
        "llm.model.layers.27.self_attn.k_proj.weight": (512, 3584),  # 4 KV heads x 128
        "llm.model.layers.0.mlp.down_proj.weight": (3584, 18944),
        "llm.model.norm.weight": (3584,),
        "encoder.conv1.weight": (1280, 128, 3),
        "encoder.conv2.weight": (1280, 1280, 3),
        "encoder.embed_positions.weight": (1500, 1280),
        "encoder.layers.31.fc1.weight": (5120, 1280),
        "encoder.layer_norm.weight": (1280,),
        "audio_adapter.downsample_layers.0.conv1d.weight": (1280, 1280, 3),
        "audio_adapter.downsample_layers.1.linear2.weight": (1280, 2048),
        "audio_adapter.downsample_layers.2.linear1.weight": (2048, 1280),
        "audio_adapter.downsample_layers.2.linear2.weight": (3584, 2048),
        "audio_adapter.downsample_layers.2.linear2.bias": (3584,),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    assert "llm.model.layers.28.self_attn.q_proj.weight" not in shapes and "encoder.layers.32.fc1.weight" not in shapes
    assert not any(n.startswith("llm.model.lm_head") or "decoder" in n for n in shapes)
    assert sum(1 for n in shapes if n.startswith("audio_adapter.")) == 18


def test_the_loader_accepts_the_full_size_released_layout(tmp_path):
    """The name and shape check that load_covo_checkpoint runs on the headers, on the 7B's names (no weights)."""
    config = released_covo_config()
    stored = [
        checkpoint._StoredTensor(released_name(n), tmp_path / "model-00001-of-00004.safetensors", tuple(p.shape))
        for n, p in build_covo_on_meta(config).named_parameters()
    ]
    empty = checkpoint._build_empty(config)
    mapping = checkpoint._check_layout(empty, tmp_path / "model.safetensors.index.json", stored)
    assert len(mapping) == len(stored) == 844
    assert empty.model.language_model.rotary_emb.inv_freq.device.type == "cpu"  # built, not waiting for a tensor
    at = [t.name for t in stored].index("llm.model.embed_tokens.weight")
    stored[at] = checkpoint._StoredTensor(stored[at].name, stored[at].file, (151671, 3584))  # text rows only
    with pytest.raises(CheckpointError, match=r"embed_tokens\.weight has shape \[151671, 3584\], expected \[168055"):
        checkpoint._check_layout(empty, tmp_path / "model.safetensors.index.json", stored)


# --- bad checkpoints --------------------------------------------------------------------------------------------


def _rewrite_shard(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_config_and_wrong_model_type(copy_of):
    directory = copy_of()
    _edit_json(directory / "config.json", lambda c: c.update(model_type="qwen2"))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type is 'qwen2', expected 'covo_audio'"):
        load_covo_checkpoint(directory)
    _edit_json(directory / "config.json", lambda c: c.pop("model_type"))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type is None"):
        load_covo_checkpoint(directory)
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"copy/config\.json: missing"):
        load_covo_checkpoint(directory)


def test_missing_shard_is_named(copy_of):
    directory = copy_of()
    shard = _shard(directory, 2)
    shard.unlink()
    with pytest.raises(CheckpointError) as err:
        load_covo_checkpoint(directory)
    assert str(err.value).startswith(f"{shard}: missing shard (named in model.safetensors.index.json for ")


def test_no_weights_at_all_names_what_was_found(copy_of):
    directory = copy_of()
    for path in directory.glob("model*"):
        path.unlink()
    with pytest.raises(CheckpointError, match=r"copy: no weights, neither model\.safetensors\.index\.json .*config"):
        load_covo_checkpoint(directory)


def test_shape_mismatch_names_file_parameter_and_shapes(copy_of):
    directory = copy_of()
    name = "audio_adapter.downsample_layers.2.linear2.weight"
    shard = directory / json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"][name]
    _rewrite_shard(shard, lambda t: t.update({name: torch.zeros(t[name].shape[0] + 1, t[name].shape[1])}))
    with pytest.raises(CheckpointError) as err:
        load_covo_checkpoint(directory)
    assert str(err.value).startswith(f"{shard}: {name} has shape [65, 64], expected [64, 64]")


def test_unexpected_and_missing_names_are_listed(copy_of):
    directory = copy_of()
    index_path = directory / "model.safetensors.index.json"
    shard = _shard(directory, 1)
    _rewrite_shard(shard, lambda t: t.update({"llm.model.extra_gate.weight": torch.zeros(2)}))
    _edit_json(index_path, lambda i: i["weight_map"].update({"llm.model.extra_gate.weight": shard.name}))
    with pytest.raises(CheckpointError) as err:
        load_covo_checkpoint(directory)
    assert str(err.value) == f"{shard}: 1 unexpected parameter name(s): llm.model.extra_gate.weight"

    def drop(tensors):
        del tensors["llm.model.extra_gate.weight"]
        del tensors[victim]

    victim = next(iter(load_file(shard)))
    _rewrite_shard(shard, drop)
    _edit_json(index_path, lambda i: [i["weight_map"].pop(n) for n in ("llm.model.extra_gate.weight", victim)])
    with pytest.raises(CheckpointError, match=rf"index\.json: 1 parameter\(s\) missing: {victim}$"):
        load_covo_checkpoint(directory)


def test_a_save_pretrained_directory_loads_through_the_same_checked_loader(model, tmp_path):
    hf = copy.deepcopy(model)
    hf.save_pretrained(tmp_path / "hf", max_shard_size=SHARD)  # our module names, sharded with an index
    tiny_tokenizer().save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    loaded, _ = load_covo_checkpoint(tmp_path / "hf")
    _assert_same_state(loaded, model)
    assert not loaded.training


def test_saving_back_keeps_the_loaded_checkpoints_architectures(saved, tmp_path):
    source = shutil.copytree(saved, tmp_path / "source")
    _edit_json(source / "config.json", lambda c: c.update(architectures=["SomeReleasedName"]))
    loaded, tokenizer = load_covo_checkpoint(source)
    loaded.save_pretrained(tmp_path / "trainer-checkpoint")  # transformers overwrites config.architectures
    save_covo_checkpoint(loaded, tokenizer, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architectures"] == ["SomeReleasedName"]


def test_index_and_shard_must_agree(copy_of):
    directory = copy_of()
    shard = _shard(directory, 3)
    victim = next(iter(load_file(shard)))
    _rewrite_shard(shard, lambda t: t.pop(victim))
    with pytest.raises(CheckpointError) as err:
        load_covo_checkpoint(directory)
    assert str(err.value) == f"{shard}: lacks 1 tensor(s) that model.safetensors.index.json puts there: {victim}"


def test_tokenizer_without_audio_tokens_or_of_the_wrong_length(copy_of, tokenizer):
    directory = copy_of()
    _edit_json(directory / "config.json", lambda c: c.update(audio_token_index=c["audio_token_index"] + 1))
    n = len(tokenizer)
    expected = rf"tokenizer\.json: tokenizer has {n} entries but config\.json gives audio_token_index {n + 1}"
    with pytest.raises(CheckpointError, match=expected):
        load_covo_checkpoint(directory)

    def drop_audio(data, key):
        data[key] = [t for t in data[key] if (t["content"] if isinstance(t, dict) else t) not in AUDIO_SPECIAL_TOKENS]

    _edit_json(directory / "tokenizer.json", lambda t: drop_audio(t, "added_tokens"))
    _edit_json(directory / "tokenizer_config.json", lambda t: drop_audio(t, "extra_special_tokens"))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: tokenizer lacks the Covo-Audio special token\(s\)"):
        load_covo_checkpoint(directory)


# --- crash safety -----------------------------------------------------------------------------------------------


def test_a_crash_while_saving_leaves_the_previous_checkpoint_loadable(saved, model, tokenizer, tmp_path, monkeypatch):
    target = shutil.copytree(saved, tmp_path / "covo")
    other = tiny_model(tokenizer, seed=1)
    calls = []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_save, "save_file", failing_save)
    with pytest.raises(OSError, match="simulated"):
        save_covo_checkpoint(other, tokenizer, target, max_shard_size=SHARD)
    assert len(calls) == 2 and ".tmp-" in calls[0]  # it was writing elsewhere, not into the checkpoint
    assert [p.name for p in tmp_path.iterdir()] == ["covo"]  # the partial directory is gone
    reloaded, _ = load_covo_checkpoint(target)
    _assert_same_state(reloaded, model)


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(model, tokenizer, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a Covo-Audio checkpoint directory; refusing"):
        save_covo_checkpoint(model, tokenizer, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
