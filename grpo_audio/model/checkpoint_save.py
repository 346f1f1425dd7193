"""Save a model (LoRA merged) as a Covo-Audio checkpoint directory in the released format: a drop-in replacement.

Saving writes the released layout and names (``checkpoint_format``): ``llm.*`` / ``encoder.*`` / ``audio_adapter.*``
safetensors shards ``model-0000i-of-0000K.safetensors`` with ``model.safetensors.index.json`` (one
``model.safetensors`` and no index when everything fits in one shard). The split into shards is huggingface_hub's
(the one transformers' ``save_pretrained`` uses); the tensors are written here, each shard's only when that shard is
written. A PEFT (LoRA) model is saved with its adapters merged into the base weights, one adapted layer at a time on a
copy of that layer, so the model being trained is left untouched and the extra memory is one layer, not a second
model. The directory is written as ``<directory>.tmp-XXXX`` and renamed over the old one only when complete.

``config.json`` is written as the released code writes it (sub-config tags ``_llm_config_type: qwen2`` /
``_encoder_config_type: whisper``, ``architectures: [CovoAudioForCausalLM]``, or the loaded checkpoint's own value).
Additions to the released ``config.json`` (harmless to the released loader, which ignores unknown keys):
``audio_placeholder_token_id`` and ``adapter_hidden_size`` (see ``configuration.py``), and ``llm_config.rope_theta``
written beside transformers-5's ``rope_parameters`` so that a transformers-4 reader gets the right RoPE base.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors.torch import save_file
from torch import nn

from grpo_audio.model.checkpoint_format import CONFIG_NAME, INDEX_NAME, CheckpointError, released_name
from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.tokenizer import AUDIO_PLACEHOLDER, check_covo_tokens

RELEASED_ARCHITECTURE = "CovoAudioForCausalLM"  # the released model class: config.json's "architectures"
SUB_ARCHITECTURES = {"llm_config": "Qwen2ForCausalLM", "encoder_config": "WhisperForConditionalGeneration"}
# huggingface_hub formats it as model.safetensors (one shard) or model-00001-of-0000K.safetensors, the released names
SHARD_PATTERN = "model{suffix}.safetensors"


@dataclass
class _Export:
    """One tensor to write: its shape and dtype are known up front, the data is produced when its shard is written
    (merged LoRA weights are computed then, one layer at a time)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


def _local_state(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The module's own parameters and persistent buffers (no children)."""
    yield from module.named_parameters(recurse=False)
    skip = module._non_persistent_buffers_set
    yield from ((n, b) for n, b in module.named_buffers(recurse=False) if n not in skip)


def _local_state_deep(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for prefix, sub in module.named_modules():
        for name, tensor in _local_state(sub):
            yield (f"{prefix}.{name}" if prefix else name), tensor


def _peft_types() -> tuple[type, type] | None:
    """(tuner layer base class, modules_to_save wrapper) from peft, or None where peft is not installed."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import ModulesToSaveWrapper
    except ImportError:  # peft is a dependency; without it no model can carry adapters
        return None
    return BaseTunerLayer, ModulesToSaveWrapper


def _unwrap(model: nn.Module) -> nn.Module:
    """The ``CovoAudioForConditionalGeneration`` inside a ``PeftModel`` (adapter layers still injected)."""
    try:
        from peft import PeftModel
    except ImportError:
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _export_plan(model: nn.Module, merge_lora: bool) -> dict[str, _Export]:
    """Our names -> tensors to write, with PEFT wrappers resolved to plain weights (LoRA merged)."""
    model = _unwrap(model)
    peft_types = _peft_types()
    has_adapters = peft_types is not None and any(isinstance(m, peft_types) for m in model.modules())
    if has_adapters and not merge_lora:
        raise ValueError(
            "the model carries PEFT adapters and merge_lora=False: the released format has no place for adapter "
            "tensors (save the adapter alone with model.save_pretrained, or pass merge_lora=True)"
        )
    tuner_layer, saved_wrapper = peft_types if has_adapters else ((), ())
    last_merged: dict[int, dict[str, torch.Tensor]] = {}  # one layer at a time: its weight and bias share a merge

    def merged(layer: nn.Module, key: str) -> torch.Tensor:
        if id(layer) not in last_merged:
            copy_ = copy.deepcopy(layer)  # the live layer keeps its separate adapters
            if not copy_.merged and not copy_.disable_adapters:
                copy_.merge(adapter_names=list(copy_.active_adapters))
            last_merged.clear()
            last_merged[id(layer)] = dict(_local_state_deep(copy_.get_base_layer()))
        return last_merged[id(layer)][key].detach()

    plan: dict[str, _Export] = {}

    def add(name: str, tensor: torch.Tensor, read: Callable[[], torch.Tensor]) -> None:
        plan[name] = _Export(tuple(tensor.shape), tensor.dtype, read)

    def visit(module: nn.Module, prefix: str) -> None:
        if isinstance(module, tuner_layer):  # a LoRA layer: its base layer's tensors with the adapters merged in
            for name, tensor in _local_state_deep(module.get_base_layer()):
                add(prefix + name, tensor, lambda m=module, k=name: merged(m, k))
            return
        if isinstance(module, saved_wrapper):  # modules_to_save: the trained copy is the module
            off = module.disable_adapters
            visit(module.original_module if off else module.modules_to_save[module.active_adapter], prefix)
            return
        for name, tensor in _local_state(module):
            add(prefix + name, tensor, lambda t=tensor: t.detach())
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.")

    visit(model, "")
    return plan


def _config_json(config: CovoAudioConfig, dtype: torch.dtype, architectures: list[str]) -> dict:
    """config.json as the released code writes it: the sub-configs' type tags (``_llm_config_type: qwen2`` ...),
    ``architectures`` naming the released model class, each sub-config's own ``architectures``, the weights' dtype."""
    data = config.to_dict()  # carries _llm_config_type / _encoder_config_type
    data["architectures"] = architectures
    for key, default in SUB_ARCHITECTURES.items():
        data[key]["architectures"] = data[key].get("architectures") or [default]
    data["dtype"] = str(dtype).removeprefix("torch.")
    rope = data["llm_config"].get("rope_parameters") or {}
    if "rope_theta" in rope:
        data["llm_config"]["rope_theta"] = rope["rope_theta"]
    return data


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_checkpoint_dir(directory: Path, model_type: str = "covo_audio") -> bool:
    try:
        return json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8")).get("model_type") == model_type
    except (OSError, ValueError, AttributeError):
        return False


def _refuse_foreign(target: Path, model_type: str, title: str) -> None:
    """A directory that exists, is not empty and holds no checkpoint of this type is never replaced."""
    if target.exists() and (
        not target.is_dir() or (any(target.iterdir()) and not _is_checkpoint_dir(target, model_type))
    ):
        raise CheckpointError(f"{target}: exists and is not a {title} checkpoint directory; refusing to replace it")


def save_covo_checkpoint(
    model: nn.Module,
    tokenizer,
    directory: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    merge_lora: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a released-format Covo-Audio checkpoint directory; returns its path.

    ``model`` is a ``CovoAudioForConditionalGeneration`` or a PEFT model around one. With ``merge_lora`` (default) the
    adapters are merged into the saved weights, layer by layer on copies, leaving ``model`` unchanged; with
    ``merge_lora=False`` a model carrying adapters is refused (the released format has no adapter tensors).
    ``max_shard_size``: bytes, or a string such as ``"5GB"`` / ``"500MiB"``; more than one shard gets an index.
    ``extra_files`` (name -> UTF-8 text, e.g. the training settings) are written with the checkpoint, so they are
    part of the same atomic replacement.

    Crash safety: everything is written and fsynced in ``<directory>.tmp-XXXX`` first; an existing ``directory`` is
    then renamed to ``<directory>.old-XXXX``, the new one renamed into place and the old one deleted. A failure while
    writing leaves the old checkpoint untouched (and removes the partial one). A directory that exists but is not a
    Covo-Audio checkpoint is never replaced.
    """
    from transformers.utils.hub import convert_file_size_to_int

    target = Path(directory)
    _refuse_foreign(target, "covo_audio", "Covo-Audio")
    max_bytes = convert_file_size_to_int(max_shard_size)
    plan = _export_plan(model, merge_lora)
    inner = _unwrap(model)
    config = inner.config
    exports = {released_name(ours): entry for ours, entry in plan.items()}  # keyed by the names written
    ids = check_covo_tokens(tokenizer, "tokenizer to save")  # never write what load_covo_checkpoint would refuse
    if len(tokenizer) != config.audio_token_index or ids[AUDIO_PLACEHOLDER] != config.audio_placeholder_token_id:
        raise CheckpointError(
            f"{target}: tokenizer (len {len(tokenizer)}, <|cAUDIO|> {ids[AUDIO_PLACEHOLDER]}) does not match the "
            f"model config (audio_token_index {config.audio_token_index}, audio_placeholder_token_id "
            f"{config.audio_placeholder_token_id})"
        )
    dtype = _main_dtype(plan)
    # a loaded released checkpoint's own value, else the class the released checkpoint names (not ours: readers of the
    # released format key on that name)
    architectures = getattr(inner, "released_architectures", None) or [RELEASED_ARCHITECTURE]
    config_data = _config_json(config, dtype, architectures)
    extras = dict(extra_files or {})
    return _write_directory(target, exports, config_data, inner, tokenizer, extras, max_bytes)


def _main_dtype(plan: dict[str, _Export]) -> torch.dtype:
    float_dtypes = [e.dtype for e in plan.values() if e.dtype.is_floating_point]
    return max(set(float_dtypes), key=float_dtypes.count)


def _write_directory(
    target: Path,
    exports: dict[str, _Export],
    config_data: dict,
    inner: nn.Module,
    tokenizer,
    extra_files: dict[str, str],
    max_bytes: int,
    save_others: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``exports`` (names -> tensors) as safetensors shards, ``config.json``, the generation config, the
    tokenizer, ``save_others(directory)`` and ``extra_files`` into ``<target>.tmp-XXXX``, fsync, and rename it over
    ``target`` (module docstring)."""
    # Only huggingface_hub's split is used: its save_torch_state_dict wants every tensor in memory at once (each merged
    # LoRA layer included) and writes into the directory it is given; the split needs sizes alone, known up front.
    split = split_state_dict_into_shards_factory(
        exports, get_storage_size=lambda entry: entry.nbytes, filename_pattern=SHARD_PATTERN, max_shard_size=max_bytes
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        for file, names in split.filename_to_tensors.items():
            tensors = {name: exports[name].read().to("cpu").contiguous() for name in names}
            save_file(tensors, str(tmp / file), metadata={"format": "pt"})
            del tensors  # one shard's tensors in memory at a time
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / CONFIG_NAME).write_text(json.dumps(config_data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        generation_config = getattr(inner, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if save_others is not None:
            save_others(tmp)
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for path in tmp.iterdir():
            _fsync(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f"{target.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)
    _fsync(target.parent)
    return target


# transformers' classes of the families saved in transformers' layout: config.json model_type -> (class, title)
TRANSFORMERS_CLASSES = {
    "qwen2_audio": ("Qwen2AudioForConditionalGeneration", "Qwen2-Audio"),
    "qwen2_5_omni_thinker": ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2.5-Omni thinker"),
}


def save_transformers_checkpoint(
    model: nn.Module,
    tokenizer,
    directory: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a Qwen-family policy (``Qwen2AudioPolicy``, ``OmniThinkerPolicy``; or a PEFT model around one, LoRA
    merged as above) as a checkpoint directory that transformers' own class (``TRANSFORMERS_CLASSES``) loads with
    ``from_pretrained``: the parameter names transformers 5 writes, ``config.json`` naming that class in
    ``architectures``, the tokenizer and the Whisper feature extractor's ``preprocessor_config.json`` (128 mel bins,
    16 kHz, 30 s). Written and replaced as ``save_covo_checkpoint`` does."""
    from transformers import WhisperFeatureExtractor
    from transformers.utils.hub import convert_file_size_to_int

    target = Path(directory)
    inner = _unwrap(model)
    extras = dict(extra_files or {})
    max_bytes = convert_file_size_to_int(max_shard_size)
    source = getattr(inner, "full_omni_source", None)
    if source is not None:
        return _write_full_omni(model, tokenizer, target, Path(source), extras, max_bytes)
    model_type = inner.config.model_type
    architecture, title = TRANSFORMERS_CLASSES[model_type]
    _refuse_foreign(target, model_type, title)
    plan = _export_plan(model, merge_lora=True)
    config_data = inner.config.to_dict()
    config_data["architectures"] = [architecture]
    config_data["dtype"] = str(_main_dtype(plan)).removeprefix("torch.")

    def save_feature_extractor(where: Path) -> None:
        extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, return_attention_mask=True)
        extractor.save_pretrained(where)

    return _write_directory(target, plan, config_data, inner, tokenizer, extras, max_bytes, save_feature_extractor)


# safetensors header dtype codes -> torch dtypes, for tensors copied from a source checkpoint unread until written
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _source_exports(source: Path, skip_prefix: str) -> dict[str, _Export]:
    """Every tensor of ``source``'s safetensors files whose name does not start with ``skip_prefix``, read from its
    file only when its shard is written."""
    from safetensors import safe_open

    exports: dict[str, _Export] = {}
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():  # safe_open handles are not iterable
                if name.startswith(skip_prefix):
                    continue
                piece = handle.get_slice(name)

                def read(file=file, name=name) -> torch.Tensor:
                    with safe_open(str(file), "pt") as reader:
                        return reader.get_tensor(name)

                exports[name] = _Export(tuple(piece.get_shape()), _SAFETENSORS_DTYPES[piece.get_dtype()], read)
    return exports


def _write_full_omni(model, tokenizer, target: Path, source: Path, extras: dict[str, str], max_bytes: int) -> Path:
    """The full Qwen2.5-Omni directory ``source`` with the trained thinker in place: the thinker's tensors (LoRA
    merged) under ``thinker.``, every other tensor (talker, vocoder) and file copied from ``source`` unchanged (its
    ``spk_dict.pt`` byte for byte, never unpickled), its ``config.json`` as it was."""
    _refuse_foreign(target, "qwen2_5_omni", "Qwen2.5-Omni")
    exports = {f"thinker.{name}": entry for name, entry in _export_plan(model, merge_lora=True).items()}
    exports.update(_source_exports(source, "thinker."))
    config_data = json.loads((source / CONFIG_NAME).read_text(encoding="utf-8"))

    def copy_other_files(where: Path) -> None:
        for path in source.iterdir():
            weights = path.suffix == ".safetensors" or path.name in (INDEX_NAME, CONFIG_NAME)
            if path.is_file() and not weights:
                shutil.copyfile(path, where / path.name)  # the source's own tokenizer and generation files win

    inner = _unwrap(model)
    return _write_directory(target, exports, config_data, inner, tokenizer, extras, max_bytes, copy_other_files)


def save_checkpoint(model: nn.Module, tokenizer, directory: str | os.PathLike, **options) -> Path:
    """The model family's saver: ``save_covo_checkpoint`` (the released Covo-Audio format) or
    ``save_transformers_checkpoint`` (transformers' format, the Qwen families)."""
    if _unwrap(model).config.model_type in TRANSFORMERS_CLASSES:
        return save_transformers_checkpoint(model, tokenizer, directory, **options)
    return save_covo_checkpoint(model, tokenizer, directory, **options)


__all__ = ["TRANSFORMERS_CLASSES", "save_checkpoint", "save_covo_checkpoint", "save_transformers_checkpoint"]
