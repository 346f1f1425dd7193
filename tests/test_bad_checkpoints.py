"""Bad checkpoint directories: each kind is one ``CheckpointError`` line naming the file or tensor, and no model.

Both layouts go through the one loader (``load_covo_checkpoint``, behind ``grpo_audio.model.build.load_pretrained``,
which training, evaluation and the benchmarks use): the released one (``llm.*`` names, written by
``save_covo_checkpoint``) and ours (``model.language_model.*`` names, written by transformers' ``save_pretrained``).
Throughout, anything that would unpickle (``pickle.load(s)``, ``torch.load``) or fall back to transformers'
``from_pretrained`` fails the test.
"""

import json
import os
import pickle
import re
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from grpo_audio.cli import main as cli_main
from grpo_audio.model.build import load_pretrained
from grpo_audio.model.checkpoint_load import CheckpointError, load_covo_checkpoint
from grpo_audio.model.checkpoint_save import save_covo_checkpoint

SHARD = "60KB"  # the tiny model is ~0.4 MB in float32: several shards and an index
INDEX = "model.safetensors.index.json"
REAL_PICKLE_LOADS = pickle.loads  # kept before the fixture below replaces it, to show the test pickle is live


class RunsCodeWhenUnpickled:
    """Pickles to a call of ``os.mkdir(marker)``: unpickling the file runs it, so the marker shows any read."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(autouse=True)
def nothing_unpickles_and_transformers_never_loads(monkeypatch):
    def forbidden(*args, **kwargs):
        pytest.fail("a pickle was unpickled or transformers' from_pretrained was called")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(forbidden))


@pytest.fixture(scope="module")
def layouts(tokenizer, model, tmp_path_factory):
    """Good tiny checkpoints: 'released' (sharded, index), 'harness' (save_pretrained, sharded) and 'harness_single'
    (save_pretrained, one model.safetensors). Each test damages a copy."""
    root = tmp_path_factory.mktemp("good")
    save_covo_checkpoint(model, tokenizer, root / "released", max_shard_size=SHARD)
    for name, shard in (("harness", SHARD), ("harness_single", "1GB")):
        model.save_pretrained(root / name, max_shard_size=shard)
        tokenizer.save_pretrained(root / name)
    assert (root / "harness" / INDEX).is_file() and not (root / "harness_single" / INDEX).exists()
    return {name: root / name for name in ("released", "harness", "harness_single")}


# --- damage: each edits a copy of a good checkpoint and returns what the error must name -------------------------


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rewrite(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _shard(d, i=1):
    shards = sorted(d.glob("model-*.safetensors"))
    return shards[i - 1] if shards else d / "model.safetensors"


def _shard_of(d, tensor):
    return d / json.loads((d / INDEX).read_text())["weight_map"][tensor] if (d / INDEX).is_file() else _shard(d)


def _weight_name(d):
    """A 2-D backbone weight's name, in whichever layout ``d`` uses."""
    index = d / INDEX
    if index.is_file():
        names = json.loads(index.read_text())["weight_map"]
        return next(n for n in names if n.endswith("up_proj.weight"))
    return next(n for n in load_file(d / "model.safetensors") if n.endswith("up_proj.weight"))


def _drop_weights(d):
    for path in [*d.glob("*.safetensors"), d / INDEX]:
        path.unlink(missing_ok=True)


def _evil_pickle(path):
    path.write_bytes(pickle.dumps(RunsCodeWhenUnpickled(path.parent.parent / "UNPICKLED")))


def index_names_an_absent_tensor(d):
    shard = _shard(d)
    name = _weight_name(d).replace("mlp.up_proj", "ghost")
    _edit_json(d / INDEX, lambda i: i["weight_map"].update({name: shard.name}))
    return {"file": shard, "tensor": name}


def only_pytorch_model_bin(d):
    _drop_weights(d)
    _evil_pickle(d / "pytorch_model.bin")
    return {"file": d / "pytorch_model.bin"}


def bin_next_to_safetensors(d):
    _evil_pickle(d / "pytorch_model.bin")
    return {"file": d / "pytorch_model.bin"}


def pt_next_to_safetensors(d):
    _evil_pickle(d / "consolidated.pt")
    return {"file": d / "consolidated.pt"}


def ckpt_alone(d):
    _drop_weights(d)
    _evil_pickle(d / "model.ckpt")
    return {"file": d / "model.ckpt"}


def truncated_safetensors(d):
    shard = _shard(d, 2)
    shard.write_bytes(shard.read_bytes()[:-100])
    return {"file": shard}


def zero_byte_safetensors(d):
    shard = _shard(d, 2)
    shard.write_bytes(b"")
    return {"file": shard}


def garbage_header(d):
    shard = _shard(d)
    shard.write_bytes(b"this is not a safetensors file at all " * 8)
    return {"file": shard}


def header_not_json(d):
    shard = _shard(d)
    shard.write_bytes((24).to_bytes(8, "little") + b"{definitely: not json!!}" + bytes(64))
    return {"file": shard}


def missing_shard(d):
    shard = _shard(d, 2)
    shard.unlink()
    return {"file": shard}


def nan_weight(d):
    name = _weight_name(d)
    shard = _shard_of(d, name)
    _rewrite(shard, lambda t: t[name].__setitem__((0, 0), float("nan")))
    return {"file": shard, "tensor": name}


def int8_weight(d):
    """A quantized export: one weight stored as int8 (its shape unchanged)."""
    name = _weight_name(d)
    shard = _shard_of(d, name)
    _rewrite(shard, lambda t: t.__setitem__(name, t[name].to(torch.int8)))
    return {"file": shard, "tensor": name}


def inf_weight(d):
    name = _weight_name(d)
    shard = _shard_of(d, name)
    _rewrite(shard, lambda t: t[name][1].__setitem__(slice(0, 2), torch.tensor([float("inf"), -float("inf")])))
    return {"file": shard, "tensor": name}


def missing_parameter(d):
    name = _weight_name(d).replace("mlp.up_proj.weight", "input_layernorm.weight")  # in a shard of several tensors
    shard = _shard_of(d, name)
    _rewrite(shard, lambda t: t.pop(name))
    if (d / INDEX).is_file():
        _edit_json(d / INDEX, lambda i: i["weight_map"].pop(name))
    return {"file": d / INDEX if (d / INDEX).is_file() else shard, "tensor": name}


def unexpected_parameter(d):
    name = _weight_name(d).replace("up_proj", "extra_proj")
    shard = _shard(d)
    _rewrite(shard, lambda t: t.update({name: torch.zeros(2)}))
    if (d / INDEX).is_file():
        _edit_json(d / INDEX, lambda i: i["weight_map"].update({name: shard.name}))
    return {"file": shard, "tensor": name}


def wrong_shape(d):
    name = _weight_name(d)
    shard = _shard_of(d, name)
    _rewrite(shard, lambda t: t.update({name: torch.zeros(3, 3)}))
    return {"file": shard, "tensor": name}


def config_missing(d):
    (d / "config.json").unlink()
    return {"file": d / "config.json"}


def config_not_json(d):
    (d / "config.json").write_text('{"model_type": "covo_audio", ')
    return {"file": d / "config.json"}


def config_zero_bytes(d):
    (d / "config.json").write_bytes(b"")
    return {"file": d / "config.json"}


def config_wrong_model_type(d):
    _edit_json(d / "config.json", lambda c: c.update(model_type="qwen2"))
    return {"file": d / "config.json"}


def config_without_llm_config(d):
    _edit_json(d / "config.json", lambda c: c.pop("llm_config"))
    return {"file": d / "config.json"}


def index_not_json(d):
    (d / INDEX).write_text("{ not an index")
    return {"file": d / INDEX}


def no_weights_at_all(d):
    _drop_weights(d)
    return {"file": d}


def stray_shard_beside_the_index(d):
    shutil.copy(_shard(d), d / "model-00001-of-00099.safetensors")
    return {"file": d / "model-00001-of-00099.safetensors"}


def stray_file_beside_model_safetensors(d):
    shutil.copy(d / "model.safetensors", d / "model-00001-of-00002.safetensors")
    return {"file": d / "model-00001-of-00002.safetensors"}


def names_of_neither_layout(d):
    _rewrite(d / "model.safetensors", lambda t: [t.update({"backbone." + k: t.pop(k)}) for k in list(t)])
    return {"file": d / "model.safetensors"}


def tokenizer_missing(d):
    (d / "tokenizer.json").unlink()
    (d / "tokenizer_config.json").unlink()
    return {"file": d / "tokenizer.json"}


PICKLE = "{file}: pickle weights are refused, safetensors only"
UNREADABLE = "{file}: not a readable safetensors file ("
CASES = [
    # (good checkpoint, damage, what the one-line error says)
    ("released", index_names_an_absent_tensor, "{file}: lacks 1 tensor(s) that " + INDEX + " puts there: {tensor}"),
    ("released", only_pytorch_model_bin, PICKLE),
    ("released", bin_next_to_safetensors, PICKLE),
    ("released", pt_next_to_safetensors, PICKLE),
    ("released", truncated_safetensors, UNREADABLE + "truncated: "),
    ("released", zero_byte_safetensors, UNREADABLE + "empty, 0 bytes)"),
    ("released", garbage_header, UNREADABLE),
    ("released", header_not_json, UNREADABLE),
    ("released", missing_shard, "{file}: missing shard (named in " + INDEX),
    ("released", nan_weight, "{file}: {tensor} holds non-finite values (1 NaN, 0 inf)"),
    ("released", inf_weight, "{file}: {tensor} holds non-finite values (0 NaN, 2 inf)"),
    ("released", int8_weight, "{file}: {tensor} is stored as I8, expected a floating-point dtype"),
    ("harness_single", int8_weight, "{file}: {tensor} is stored as I8, expected a floating-point dtype"),
    ("released", missing_parameter, "{file}: 1 parameter(s) missing: {tensor}"),
    ("released", unexpected_parameter, "{file}: 1 unexpected parameter name(s): {tensor}"),
    ("released", wrong_shape, "{file}: {tensor} has shape [3, 3], expected"),
    ("released", config_missing, "{file}: missing"),
    ("released", config_not_json, "{file}: not valid JSON"),
    ("released", config_zero_bytes, "{file}: not valid JSON"),
    ("released", config_wrong_model_type, "{file}: model_type is 'qwen2', expected 'covo_audio'"),
    ("released", config_without_llm_config, "{file}: llm_config is missing or not an object"),
    ("released", index_not_json, "{file}: not a safetensors index with a weight_map"),
    ("released", no_weights_at_all, "{file}: no weights, neither " + INDEX + " nor model.safetensors (found: "),
    ("released", stray_shard_beside_the_index, "{file}: a safetensors file that " + INDEX + " does not name"),
    ("released", tokenizer_missing, "{file}: missing"),
    ("harness", only_pytorch_model_bin, PICKLE),  # transformers would have read it (and trained a random model)
    ("harness", bin_next_to_safetensors, PICKLE),
    ("harness", ckpt_alone, PICKLE),
    ("harness", index_names_an_absent_tensor, "{file}: lacks 1 tensor(s) that " + INDEX + " puts there: {tensor}"),
    ("harness", missing_shard, "{file}: missing shard (named in " + INDEX),
    ("harness", nan_weight, "{file}: {tensor} holds non-finite values (1 NaN, 0 inf)"),
    ("harness", missing_parameter, "{file}: 1 parameter(s) missing: {tensor}"),  # transformers only warns
    ("harness", unexpected_parameter, "{file}: 1 unexpected parameter name(s): {tensor}"),  # transformers only warns
    ("harness", config_wrong_model_type, "{file}: model_type is 'qwen2', expected 'covo_audio'"),
    ("harness_single", truncated_safetensors, UNREADABLE + "truncated: "),
    ("harness_single", inf_weight, "{file}: {tensor} holds non-finite values (0 NaN, 2 inf)"),
    ("harness_single", missing_parameter, "{file}: 1 parameter(s) missing: {tensor}"),
    ("harness_single", stray_file_beside_model_safetensors, "{file}: a safetensors file beside model.safetensors"),
    ("harness_single", names_of_neither_layout, "{file}: no Covo-Audio parameter names"),
]


@pytest.mark.parametrize(
    "layout, damage, expected", CASES, ids=[f"{layout}-{damage.__name__}" for layout, damage, _ in CASES]
)
def test_a_bad_checkpoint_is_one_error_line_naming_the_file_or_tensor(layouts, tmp_path, layout, damage, expected):
    directory = shutil.copytree(layouts[layout], tmp_path / "ckpt")
    named = damage(directory)
    result = None
    with pytest.raises(CheckpointError) as err:
        result = load_pretrained(directory)  # the entry point of training, evaluation and the benchmarks
    message = str(err.value)
    assert result is None
    assert "\n" not in message
    assert expected.format(**named) in message, message
    assert str(named["file"]) in message and named.get("tensor", "") in message
    assert not (tmp_path / "UNPICKLED").exists()


# --- pickles ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["released", "harness_single"])
@pytest.mark.parametrize(
    "name, alone",
    [
        ("pytorch_model.bin", True),
        ("pytorch_model.bin", False),
        ("model.pt", False),
        ("w.pth", True),
        ("m.ckpt", False),
    ],
)
def test_pickle_weights_are_refused_without_being_unpickled(layouts, tmp_path, layout, name, alone):
    """The README's promise: safetensors only, a pickle file is never read (it would run code here)."""
    directory = shutil.copytree(layouts[layout], tmp_path / "ckpt")
    if alone:
        _drop_weights(directory)
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(RunsCodeWhenUnpickled(marker))
    (directory / name).write_bytes(payload)
    with pytest.raises(CheckpointError, match=f"{directory / name}: pickle weights are refused, safetensors only"):
        load_covo_checkpoint(directory)
    assert not marker.exists()
    REAL_PICKLE_LOADS(payload)  # the file was live: unpickling it runs code
    assert marker.is_dir()


def test_the_trainers_own_state_files_are_left_unopened_and_the_weights_load(layouts, tmp_path):
    """A trainer/checkpoint-N directory: model.safetensors beside the HF Trainer's pickled state (not weights)."""
    directory = shutil.copytree(layouts["harness_single"], tmp_path / "checkpoint-8")
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth"):
        _evil_pickle(directory / name)
    model, _ = load_covo_checkpoint(directory)
    assert model.lm_head.weight.shape[0] > 0
    assert not (tmp_path / "UNPICKLED").exists()


# --- through the command line -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout, damage", [("harness_single", only_pytorch_model_bin), ("released", nan_weight)], ids=["bin", "nan"]
)
@pytest.mark.parametrize("command", ["train", "eval"])
def test_the_cli_exits_2_with_one_error_line_before_any_training(layouts, tmp_path, capsys, command, layout, damage):
    directory = shutil.copytree(layouts[layout], tmp_path / "ckpt")
    named = damage(directory)
    run = tmp_path / "run"
    common = ["--set", "data.synthetic.num_questions=4", "--set", "coldstart.steps=0"]
    if command == "train":
        argv = ["train", "--set", f"run.output_dir={run}", "--set", "model.source=pretrained"]
        argv += ["--set", f"model.path={directory}", *common]
    else:
        from grpo_audio.data.synthetic import write_synthetic_set

        benchmark = write_synthetic_set(tmp_path / "benchmark", 4, ["pitch"], seed=0)
        argv = ["eval", "--model", str(directory), "--benchmark", str(benchmark), "--out", str(tmp_path / "eval")]
        argv += common
        argv += ["--set", f"run.output_dir={run}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    # one error line, last, no traceback (library warnings printed on import may come before it)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    assert str(named["file"]) in errors[0]
    assert not (run / "trainer").exists() and not (run / "metrics.jsonl").exists()
    assert not (tmp_path / "eval" / "predictions.jsonl").exists()
    if command == "train" and damage is only_pytorch_model_bin:  # found by the header check before the run starts
        assert not run.exists()


def test_check_covo_checkpoint_reads_no_tensor_data(layouts, tmp_path, monkeypatch):
    from grpo_audio.model import checkpoint_load as checkpoint

    checkpoint.check_covo_checkpoint(layouts["released"])
    monkeypatch.setattr(checkpoint, "_read_state", lambda *a, **k: pytest.fail("tensor data read"))
    checkpoint.check_covo_checkpoint(layouts["harness"])
    directory = shutil.copytree(layouts["released"], tmp_path / "ckpt")
    named = missing_shard(directory)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(named["file"]))):
        checkpoint.check_covo_checkpoint(directory)
