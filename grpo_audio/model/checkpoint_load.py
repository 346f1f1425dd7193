"""Load a Covo-Audio checkpoint directory, released layout or ours, checking everything before and while reading.

``load_covo_checkpoint`` is the one loader (training, evaluation, benchmarks, the backbone export). It also reads the
harness layout, the same files with our module names (``model.language_model.X`` ...), as transformers'
``save_pretrained`` writes them (trainer checkpoints, ``run.final_model_format: save_pretrained``). The layout is
decided from the tensor names; that layout alone is then checked, and a problem is never retried as the other one.
File names and the name mapping are in ``checkpoint_format``.

Loading reads JSON and safetensors only: no pickle, no ``trust_remote_code``, nothing from the directory is executed.
A pickle weight file (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``), alone or beside safetensors, is refused from its
name without being opened (the HF Trainer's own state files in a ``checkpoint-N`` directory are let through, unopened).
The model is built with empty (meta) parameters and the tensors are assigned, so a 7B checkpoint is read once,
without a random initialisation first. Every problem raises a one-line ``CheckpointError`` naming the file and the
problem: names and shapes are checked from the safetensors headers before any tensor data is read (every name the
index gives must be in its shard; no parameter missing, none unexpected), and each tensor is checked finite as read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from grpo_audio.model.checkpoint_format import (
    CONFIG_NAME,
    INDEX_NAME,
    NAME_MAP,
    SINGLE_NAME,
    CheckpointError,
    our_name,
    released_name,
)
from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.modeling import CovoAudioForConditionalGeneration
from grpo_audio.model.tokenizer import AUDIO_PLACEHOLDER, check_covo_tokens
from grpo_audio.paths import tried

RELEASED_LAYOUT = "released"  # llm.* / encoder.* / audio_adapter.*: the published checkpoint, save_covo_checkpoint
HARNESS_LAYOUT = "harness"  # our module names (model.language_model.* ...): transformers' save_pretrained

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# The HF Trainer's own state in a trainer/checkpoint-N directory: pickles that hold no model weights. Like every pickle
# they are never opened; they are let through so that such a directory (model.safetensors beside them) can be loaded.
_TRAINER_STATE = re.compile(r"training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth")


def _build_empty(config: CovoAudioConfig) -> CovoAudioForConditionalGeneration:
    """Parameters on meta (to be assigned from the checkpoint), buffers real: the rotary ``inv_freq`` buffers are not
    stored in checkpoints and must be computed by the constructor."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return CovoAudioForConditionalGeneration(config)


def refuse_pickles(directory: Path, allowed: frozenset[str] = frozenset()) -> None:
    """CheckpointError for a pickle weight file in ``directory``, decided from the file names: nothing is opened.

    Unpickling can run code stored in the file, so it is never done; and a pickle beside safetensors would leave open
    which of the two holds the weights meant (transformers silently prefers one), so it is refused there too.
    ``allowed``: names of pickles a family's checkpoint ships that hold no weights the harness reads (Qwen2.5-Omni's
    ``spk_dict.pt``, the talker's speakers); they are not opened either.
    """
    found = sorted(
        p.name
        for p in directory.iterdir()
        if p.suffix.lower() in PICKLE_SUFFIXES and not _TRAINER_STATE.fullmatch(p.name) and p.name not in allowed
    )
    if found:
        others = f" (also {_few(found[1:])})" if len(found) > 1 else ""
        raise CheckpointError(
            f"{directory / found[0]}: pickle weights are refused, safetensors only{others}; the file was not opened "
            "(convert it to safetensors where you trust its origin, and remove it from this directory)"
        )


def check_resume_weights(checkpoint: str | os.PathLike) -> None:
    """A trainer checkpoint about to be resumed holds weights the HF Trainer may read: ``CheckpointError`` with one
    line otherwise, before anything is loaded.

    * no pickle weight file (``pytorch_model.bin`` ...): the Trainer would read one; decided from the names, nothing
      opened. The Trainer's own state files (optimizer, scheduler, RNG) stay: transformers reads them with
      ``weights_only=True``;
    * every ``*.safetensors`` file (model or adapter) has a readable header, and each tensor in it a floating-point
      dtype (``FLOAT_DTYPES``): the Trainer copies stored values into the parameters, which would cast an integer
      export silently. Headers only: no tensor data is read.
    """
    directory = Path(checkpoint)
    refuse_pickles(directory)
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt") as f:
                dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        except (SafetensorError, OSError) as err:
            raise _unreadable(path, err) from err
        for name, dtype in dtypes.items():
            if dtype not in FLOAT_DTYPES:
                raise _not_float(path, name, dtype)


def _not_float(path: Path, name: str, dtype: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: {name} is stored as {dtype}, expected a floating-point dtype ({', '.join(FLOAT_DTYPES)}): a "
        "quantized or integer export cannot be trained"
    )


def _read_config(directory: Path) -> CovoAudioConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a Covo-Audio checkpoint directory has a config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    if model_type != CovoAudioConfig.model_type:
        raise CheckpointError(f"{path}: model_type is {model_type!r}, expected 'covo_audio'")
    for key, sub_type in (("llm_config", "qwen2"), ("encoder_config", "whisper")):
        sub = data.get(key)
        if not isinstance(sub, dict):
            raise CheckpointError(f"{path}: {key} is missing or not an object (the nested {sub_type} config)")
        if sub.get("model_type", sub_type) != sub_type:
            raise CheckpointError(f"{path}: {key}.model_type is {sub['model_type']!r}, expected {sub_type!r}")
    try:
        config = CovoAudioConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    if config.llm_config.vocab_size < config.audio_token_index:
        raise CheckpointError(
            f"{path}: llm_config.vocab_size {config.llm_config.vocab_size} is smaller than audio_token_index "
            f"{config.audio_token_index} (the text vocabulary)"
        )
    return config


def _load_tokenizer(directory: Path, config: CovoAudioConfig):
    from transformers import AutoTokenizer

    names = [n for n in ("tokenizer.json", "tokenizer_config.json") if (directory / n).is_file()]
    where = directory / (names[0] if names else "tokenizer.json")
    if not names:
        raise CheckpointError(f"{where}: missing; the checkpoint carries no tokenizer files")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{where}: cannot load the tokenizer ({err})") from err
    try:
        ids = check_covo_tokens(tokenizer, str(where))
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    if len(tokenizer) != config.audio_token_index:
        raise CheckpointError(
            f"{where}: tokenizer has {len(tokenizer)} entries but config.json gives audio_token_index "
            f"{config.audio_token_index}; they must be equal (ids from there on are speech tokens)"
        )
    config.audio_placeholder_token_id = ids[AUDIO_PLACEHOLDER]
    return tokenizer


@dataclass(frozen=True)
class _StoredTensor:
    name: str  # the name in the file (released or harness)
    file: Path
    shape: tuple[int, ...]
    dtype: str = "F32"  # the safetensors header's dtype code (BF16, F16, F32, I8, ...)


# Stored dtypes a parameter may have: floating point. An integer or 8-bit float tensor (a quantized export) would be
# assigned as is by load_state_dict(assign=True) and train as integers, or fail far from the cause.
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")


def _shard_files(directory: Path) -> tuple[Path, dict[str, list[str]]]:
    """(the file that lists the shards, {shard file name: names listed for it}); every ``*.safetensors`` file in
    the directory must be one of them (a stray one, e.g. a shard of an older save, leaves unclear what was meant)."""
    index = directory / INDEX_NAME
    present = sorted(p.name for p in directory.glob("*.safetensors"))
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({err!r})") from err
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: weight_map is empty or not an object")
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise CheckpointError(f"{index}: shard {shard!r} of {name} is not a file name inside the directory")
            shards.setdefault(shard, []).append(name)
        for shard, names in shards.items():
            if not (directory / shard).is_file():
                raise CheckpointError(
                    f"{directory / shard}: missing shard (named in {INDEX_NAME} for {len(names)} tensor(s), "
                    f"e.g. {names[0]})"
                )
        strays = [name for name in present if name not in shards]
        if strays:
            raise CheckpointError(f"{directory / strays[0]}: a safetensors file that {INDEX_NAME} does not name")
        return index, shards
    if SINGLE_NAME in present:
        strays = [name for name in present if name != SINGLE_NAME]
        if strays:
            raise CheckpointError(
                f"{directory / strays[0]}: a safetensors file beside {SINGLE_NAME}, and no {INDEX_NAME} to say which "
                "weights belong to the model"
            )
        return directory / SINGLE_NAME, {SINGLE_NAME: []}  # every tensor in the file
    found = _few(sorted(p.name for p in directory.iterdir())) or "an empty directory"
    raise CheckpointError(f"{directory}: no weights, neither {INDEX_NAME} nor {SINGLE_NAME} (found: {found})")


def _expected_size(path: Path) -> int | None:
    """The file size that a safetensors header promises (8 + header + data), or None if the header is unreadable."""
    try:
        with path.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len)) if 0 < header_len < 100_000_000 else None
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError):
        return None
    return 8 + header_len + max(ends, default=0)


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    """One line for a safetensors file the library refuses: empty, truncated, or not safetensors at all."""
    size = path.stat().st_size if path.is_file() else None
    expected = _expected_size(path) if size else None
    if size == 0:
        problem = "empty, 0 bytes"
    elif expected is not None and size < expected:
        problem = f"truncated: {size} bytes, its header describes {expected}"
    elif expected is not None and size > expected:
        problem = f"{size} bytes, its header describes {expected} (trailing data)"
    else:
        problem = str(err).removeprefix("Error while deserializing header: ")
    return CheckpointError(f"{path}: not a readable safetensors file ({problem})")


def _scan_headers(directory: Path) -> tuple[Path, list[_StoredTensor]]:
    """Names, shapes and dtypes of every stored tensor, from the safetensors headers (no tensor data is read)."""
    listing, shards = _shard_files(directory)
    stored: list[_StoredTensor] = []
    for shard, listed in shards.items():
        path = directory / shard
        try:
            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
                slices = {k: f.get_slice(k) for k in keys}
                shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
                dtypes = {k: s.get_dtype() for k, s in slices.items()}
        except (SafetensorError, OSError) as err:
            raise _unreadable(path, err) from err
        if listing.name == INDEX_NAME:
            absent = [n for n in listed if n not in shapes]
            if absent:
                raise CheckpointError(
                    f"{path}: lacks {len(absent)} tensor(s) that {INDEX_NAME} puts there: {_few(absent)}"
                )
            unlisted = sorted(set(keys) - set(listed))
            if unlisted:
                raise CheckpointError(f"{path}: holds {len(unlisted)} tensor(s) not in {INDEX_NAME}: {_few(unlisted)}")
        stored.extend(_StoredTensor(k, path, shapes[k], dtypes[k]) for k in keys)
    return listing, stored


def _few(names: list[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _detect_layout(listing: Path, stored: list[_StoredTensor]) -> str:
    """Released names (``llm.`` ...) or ours (``model.language_model.`` ...); the two prefix sets are disjoint, so
    one recognised name decides, and every other name is then checked against that layout alone."""
    if any(our_name(t.name) is not None for t in stored):
        return RELEASED_LAYOUT
    if any(t.name.startswith(tuple(mine for _, mine in NAME_MAP)) for t in stored):
        return HARNESS_LAYOUT
    raise CheckpointError(
        f"{listing}: no Covo-Audio parameter names, neither released (llm.*, encoder.*, audio_adapter.*) nor "
        f"harness (model.language_model.*, lm_head.weight, model.encoder.*, model.audio_adapter.*); "
        f"found {_few(sorted(t.name for t in stored)) or 'no tensors'}"
    )


def _check_layout(
    model: nn.Module, listing: Path, stored: list[_StoredTensor], layout: str = RELEASED_LAYOUT
) -> dict[str, _StoredTensor]:
    """{our name: stored tensor}, or CheckpointError for unexpected, missing or mis-shaped names."""
    released = layout == RELEASED_LAYOUT
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    derived = {name for name, _ in model.named_buffers()}  # e.g. rotary inv_freq: rebuilt, ignored if stored
    mapping: dict[str, _StoredTensor] = {}
    unexpected: list[_StoredTensor] = []
    for tensor in stored:
        ours = our_name(tensor.name) if released else tensor.name
        if ours in expected:
            mapping[ours] = tensor
        elif ours not in derived:
            unexpected.append(tensor)
    if unexpected:
        names = _few([t.name for t in unexpected])
        raise CheckpointError(f"{unexpected[0].file}: {len(unexpected)} unexpected parameter name(s): {names}")
    missing = [released_name(n) if released else n for n in expected if n not in mapping]
    if missing:
        raise CheckpointError(f"{listing}: {len(missing)} parameter(s) missing: {_few(missing)}")
    for ours, tensor in mapping.items():
        if tensor.shape != expected[ours]:
            raise CheckpointError(
                f"{tensor.file}: {tensor.name} has shape {list(tensor.shape)}, expected {list(expected[ours])}"
            )
        if tensor.dtype not in FLOAT_DTYPES:
            raise _not_float(tensor.file, tensor.name, tensor.dtype)
    return mapping


def _finite(path: Path, name: str, tensor: torch.Tensor, cast: bool) -> torch.Tensor:
    """``tensor``, or CheckpointError naming it when it holds NaN or inf.

    Cost: one sum per tensor (NaN and inf propagate through it), on CPU before any transfer: about 0.2 s per 1e9
    bfloat16 values here, so a second or two for the 7.6e9 of the 7B (``isfinite(t).all()`` measured ~60 times
    slower, plus a boolean mask as large as the tensor, 0.6 GB for the 7B's embedding). A sum that overflows while
    every value is finite is told apart by the exact test, which only then runs.
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all()):
        return tensor
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    after = f" after the cast to {tensor.dtype}" if cast else ""
    raise CheckpointError(f"{path}: {name} holds non-finite values ({nan} NaN, {inf} inf){after}")


def _read_state(
    mapping: dict[str, _StoredTensor], dtype: torch.dtype | None, device: str | torch.device
) -> dict[str, torch.Tensor]:
    """{our name: tensor} read from the shards, each checked finite (after the cast, which can overflow float16)."""
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for ours, tensor in mapping.items():
        by_file.setdefault(tensor.file, []).append((ours, tensor.name))
    state: dict[str, torch.Tensor] = {}
    for path, names in by_file.items():
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for ours, stored_name in names:
                    tensor = f.get_tensor(stored_name)
                    cast = dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype
                    tensor = _finite(path, stored_name, tensor.to(dtype) if cast else tensor, cast)
                    state[ours] = tensor.to(device)
        except (SafetensorError, OSError) as err:
            raise _unreadable(path, err) from err
    return state


def _checked_layout(directory: Path):
    """The checks that need no tensor data: files, config, safetensors headers, layout, names and shapes against an
    empty (meta) model. Returns ``(config, layout, empty model, name mapping)``."""
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: not a directory" if directory.exists() else f"{directory}: not found{tried(directory)}"
        )
    refuse_pickles(directory)
    config = _read_config(directory)
    listing, stored = _scan_headers(directory)
    layout = _detect_layout(listing, stored)
    model = _build_empty(config)
    return config, layout, model, _check_layout(model, listing, stored, layout)


def check_covo_checkpoint(directory: str | os.PathLike) -> None:
    """Raise ``CheckpointError`` for any problem ``load_covo_checkpoint`` would find without reading tensor data
    (everything but non-finite weights): cheap enough for the recipe loader, so a bad ``model.path`` is refused
    before a run directory is written."""
    directory = Path(directory)
    config, _, _, _ = _checked_layout(directory)
    _load_tokenizer(directory, config)


def load_covo_checkpoint(
    directory: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[CovoAudioForConditionalGeneration, object]:
    """The one loader of a Covo-Audio checkpoint directory, in either layout: ``(model in eval mode, tokenizer)``.

    The layout is decided from the files: ``config.json`` (model_type covo_audio) and safetensors whose names are the
    released ones (``llm.*`` ...) or ours (``model.language_model.*`` ..., as ``save_pretrained`` writes them); then
    that layout alone is checked, in full, and any problem is a ``CheckpointError`` naming the file (and tensor). No
    fallback to another layout or to transformers' ``from_pretrained``; pickle files are refused unopened.

    ``dtype=None`` keeps each tensor's stored dtype (bfloat16 in the release); otherwise floating tensors are cast.
    ``config.audio_placeholder_token_id`` is set from the tokenizer's ``<|cAUDIO|>`` id.
    """
    directory = Path(directory)
    config, layout, model, mapping = _checked_layout(directory)
    tokenizer = _load_tokenizer(directory, config)
    state = _read_state(mapping, dtype, device)
    # assign=True replaces the meta parameters by these tensors (keeping each parameter's requires_grad)
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)  # the constructor-built buffers
    model.config.dtype = next(model.parameters()).dtype
    if layout == RELEASED_LAYOUT:
        # written back by save_covo_checkpoint; kept here because transformers' save_pretrained (trainer checkpoints)
        # overwrites config.architectures with our class name
        model.released_architectures = list(config.architectures or [])
    if (directory / "generation_config.json").is_file():
        from transformers import GenerationConfig

        try:
            model.generation_config = GenerationConfig.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{directory / 'generation_config.json'}: cannot be read ({err})") from err
    return model.eval(), tokenizer


__all__ = ["CheckpointError", "check_covo_checkpoint", "check_resume_weights", "load_covo_checkpoint"]
