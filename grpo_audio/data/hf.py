"""Hugging Face datasets on disk: opening one, reading its column names, and the cache for audio it holds inline.

A dataset is a ``save_to_disk`` directory (``load_from_disk``), a local parquet/json/jsonl/csv/arrow file, or a
directory of such files (``load_dataset``). Its audio column is read without decoding (``Audio(decode=False)``:
decoding would need torchcodec), so each entry is a file path, ``{"path", "bytes"}`` or a decoded
``{"array", "sampling_rate"}``. Entries that are not files yet are written once into a cache directory (under the
run directory), named by content: embedded bytes as ``<sha256[:32]><ext>`` (the extension from the entry's path, or
sniffed from the bytes), arrays as ``<sha256[:32]>.wav`` (32-bit float WAV). Row-level parsing of the columns is
``grpo_audio.data.formats``'s job.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from grpo_audio.data.rows import DataError
from grpo_audio.paths import tried

HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}
HF_SUFFIXES = (".parquet", ".arrow", ".csv")  # data files always read as a Hugging Face dataset
MMSU_COLUMNS = ("choice_a", "answer_gt")  # either one marks MMSU's layout
_AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".w64", ".caf"}


class AudioEntryError(ValueError):
    """An audio entry that cannot be turned into a file; the message says what is wrong with it."""


def open_hf_dataset(path: Path, split: str | None, cache_dir: Path | None = None):
    """A ``datasets.Dataset`` from a ``save_to_disk`` directory or local data files; DataError when unusable.
    ``load_dataset`` keeps its Arrow cache in ``cache_dir`` (the run directory) rather than the user's HF cache."""
    import datasets

    if not path.exists():
        raise DataError(f"{path}: dataset not found{tried(path)}")
    saved = path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json"))
    cache = None if cache_dir is None else str(cache_dir)
    try:
        if saved:
            ds = datasets.load_from_disk(str(path))
        elif path.is_file():
            builder = HF_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{path}: not a dataset file (expected one of {', '.join(HF_FILE_BUILDERS)})")
            ds = datasets.load_dataset(builder, data_files=str(path), cache_dir=cache)
        else:
            ds = datasets.load_dataset(str(path), cache_dir=cache)
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot load the dataset ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise DataError(f"{path}: the dataset has splits {sorted(ds)}; set data.split")
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; the dataset has {sorted(ds)}")
        ds = ds[split]
    elif split is not None:
        raise DataError(f"{path}: data.split={split!r} but the directory holds a single dataset without splits")
    return ds


def open_audio_dataset(
    path: Path, split: str | None, audio_column: str, cache_dir: Path, path_columns: tuple[str, ...] = ()
):
    """``open_hf_dataset`` (Arrow cache in ``cache_dir/datasets_cache``) with its audio column set not to decode.

    DataError when the dataset has neither ``audio_column`` nor one of ``path_columns`` (columns that may hold the
    audio as a path instead: MMSU's exports name it ``audio_path``).
    """
    import datasets

    ds = open_hf_dataset(path, split, cache_dir / "datasets_cache")
    columns = ds.column_names
    if audio_column not in columns and not set(path_columns) & set(columns):
        raise DataError(f"{path}: no audio column {audio_column!r}; columns: {columns} (set data.audio_column)")
    if audio_column in columns and isinstance(ds.features[audio_column], datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    return ds


def hf_column_names(path: str | Path) -> set[str]:
    """Column names of a parquet/arrow file or a dataset directory, read from its schema without loading the data;
    empty when they cannot be read that way (csv, an unreadable file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        if path.is_dir():
            for info in sorted(path.rglob("dataset_info.json")):  # save_to_disk: the first split's features
                features = json.loads(info.read_text(encoding="utf-8")).get("features") or {}
                return set(features)
            files = sorted(path.rglob("*.parquet"))
            return set(pq.read_schema(files[0]).names) if files else set()
        if path.suffix.lower() == ".parquet":
            return set(pq.read_schema(path).names)
        if path.suffix.lower() == ".arrow":
            with pa.memory_map(str(path)) as source:
                try:
                    return set(pa.ipc.open_stream(source).schema.names)
                except pa.ArrowInvalid:
                    source.seek(0)
                    return set(pa.ipc.open_file(source).schema.names)
    except (OSError, ValueError, pa.ArrowException):  # json.JSONDecodeError is a ValueError
        return set()
    return set()


def _sniff_suffix(data: bytes) -> str:
    if data[:4] in (b"RIFF", b"RF64"):
        return ".wav"
    if data[:4] == b"fLaC":
        return ".flac"
    if data[:4] == b"OggS":
        return ".ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return ".mp3"
    if data[:4] == b"FORM":
        return ".aiff"
    return ".bin"


def cache_audio_entry(entry: dict[str, Any], cache_dir: Path) -> str | None:
    """The cache file holding an audio entry's embedded ``bytes`` or decoded ``array`` (written on first use), or
    None when the entry holds neither (then its ``path``, if any, names the file). ``AudioEntryError`` for an array
    without a positive integer ``sampling_rate``."""
    import numpy as np
    import soundfile as sf

    if entry.get("bytes"):
        data = bytes(entry["bytes"])
        suffix = Path(entry.get("path") or "").suffix.lower()
        suffix = suffix if suffix in _AUDIO_SUFFIXES else _sniff_suffix(data)
        target = cache_dir / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        if not target.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return str(target)
    if entry.get("array") is not None:
        array = np.asarray(entry["array"], dtype=np.float32)
        rate = entry.get("sampling_rate")
        if not isinstance(rate, int) or rate <= 0:
            raise AudioEntryError(f"decoded audio without a valid sampling_rate ({rate!r})")
        if array.ndim == 2 and array.shape[0] < array.shape[1]:
            array = array.T  # (channels, frames) -> (frames, channels)
        digest = hashlib.sha256(array.tobytes() + str(rate).encode()).hexdigest()[:32]
        target = cache_dir / f"{digest}.wav"
        if not target.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp.wav")
            sf.write(str(tmp), array, rate, subtype="FLOAT")
            tmp.replace(target)
        return str(target)
    return None
