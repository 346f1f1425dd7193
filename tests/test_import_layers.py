"""The package's rooms and the direction of their imports: a lower room never imports a higher one.

Every ``import`` / ``from ... import`` in every module counts, including the ones inside functions (a lazy import
is still a dependency). Same-room imports are free. ``rewards/`` is a package of its own below everything: it
imports nothing of ``grpo_audio`` and no torch/transformers/trl (reward authors and ``python -m rewards`` need no
model stack).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# rank: a module may import rooms of its own rank or lower
ROOMS = {
    "grpo_audio": 0,  # the package itself: __version__
    "grpo_audio.distributed": 0,
    "grpo_audio.resources": 0,
    "grpo_audio.files": 0,
    "grpo_audio.paths": 0,
    "grpo_audio.recipe": 1,
    "grpo_audio.audio": 2,
    "grpo_audio.model": 3,
    "grpo_audio.data": 4,
    "grpo_audio.rollout": 5,
    "grpo_audio.evaluation": 6,
    "grpo_audio.train": 7,
    "grpo_audio.cli": 8,
    "grpo_audio.__main__": 8,
}
MODEL_STACK = ("torch", "transformers", "trl", "peft", "accelerate", "vllm", "grpo_audio")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str | None:
    """The longest room prefix of ``module`` (``grpo_audio.model.build`` -> ``grpo_audio.model``)."""
    matches = [room for room in ROOMS if module == room or module.startswith(room + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in the file, at any depth; relative imports are resolved against the
    file's package (``module``: the file's dotted name when it lies outside the tree)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from grpo_audio import x" may name a submodule: count it as "grpo_audio.x" when that is a room
            names = [f"{base}.{alias.name}" for alias in node.names]
            found += [(node.lineno, n if room_of(n) not in (None, "grpo_audio") else base) for n in names]
    return found


def package_files(name: str) -> list[Path]:
    return sorted((ROOT / name).rglob("*.py"))


def test_every_module_of_grpo_audio_has_a_room():
    homeless = [module_name(p) for p in package_files("grpo_audio") if room_of(module_name(p)) is None]
    assert homeless == []


def test_lower_rooms_never_import_higher_ones():
    upward = []
    for path in package_files("grpo_audio"):
        source = room_of(module_name(path))
        for line, target in imported_modules(path):
            room = room_of(target)
            if room is not None and ROOMS[room] > ROOMS[source]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {source} imports {target}")
    assert upward == []


@pytest.mark.parametrize("path", package_files("rewards"), ids=lambda p: str(p.relative_to(ROOT)))
def test_rewards_import_no_model_stack(path):
    heavy = [f"{line}: {target}" for line, target in imported_modules(path) if target.split(".")[0] in MODEL_STACK]
    assert heavy == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a lazy upward import (inside a function) and a relative one are both found."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from grpo_audio.train.run import train\n    from ..rollout import hf\n")
    found = imported_modules(module, "grpo_audio.model.probe")
    assert found == [(2, "grpo_audio.train.run.train"), (3, "grpo_audio.rollout.hf")]
    assert all(ROOMS[room_of(target)] > ROOMS["grpo_audio.model"] for _, target in found)
