"""The run directory: created safely, marked as ours, and filled with the run's record.

Layout::

    run.json            status (running / completed), harness version, start/end times, final step
    recipe.source.yaml  the recipe file as given (absent for the embedded defaults)
    recipe.yaml         the resolved recipe (defaults and overrides applied)
    command.txt         the command line
    prompt.txt          one rendered prompt (the template as the model sees it)
    data/               generated data (synthetic source)
    metrics.jsonl       one JSON object per logged step
    final_model/        the trained model and tokenizer (written to a temporary name, then renamed)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from grpo_audio import __version__
from grpo_audio.recipe import Recipe, RecipeError, recipe_to_dict

MARKER = "run.json"


def prepare_run_dir(recipe: Recipe) -> Path:
    run_dir = Path(recipe.run.output_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / MARKER).is_file():
            raise RecipeError(
                f"run.output_dir {run_dir} exists, is not empty and was not written by grpo-audio; choose another"
            )
        if not recipe.run.overwrite:
            raise RecipeError(
                f"run.output_dir {run_dir} already holds a run; set run.overwrite=true to replace it "
                "or choose another run.output_dir"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_run_record(run_dir: Path, recipe: Recipe) -> dict:
    record = {
        "status": "running",
        "harness_version": __version__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": recipe.run.seed,
    }
    write_json_atomic(run_dir / MARKER, record)
    if recipe.source_path:
        shutil.copyfile(recipe.source_path, run_dir / "recipe.source.yaml")
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), encoding="utf-8")
    (run_dir / "command.txt").write_text(" ".join(sys.argv) + "\n", encoding="utf-8")
    return record


def finish_run_record(run_dir: Path, record: dict, **fields) -> None:
    record.update(fields, status="completed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json_atomic(run_dir / MARKER, record)


def save_model_atomic(model, tokenizer, target: Path) -> None:
    """Write to ``<target>.tmp`` and rename, so an interrupted save never leaves a half-written model."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        old = target.with_name(target.name + ".old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)
