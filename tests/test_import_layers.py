"""The package's rooms and the direction of their imports: a lower room never imports a higher one, and no modules
import each other in a circle.

Every ``import`` / ``from ... import`` in every module counts, including the ones inside functions (a lazy import
is still a dependency). Imports between rooms of the same rank, and within a room, may go either way, but never
round a circle: module A importing B importing ... A only works through import order and deferred imports, and
breaks when a module is imported first from somewhere new. ``rewards/`` is a package of its own below everything:
it imports nothing of ``grpo_audio`` and no torch/transformers/trl (reward authors and ``python -m rewards`` need no
model stack).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
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


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str | None:
    """The longest room prefix of ``module`` (``grpo_audio.model.build`` -> ``grpo_audio.model``)."""
    matches = [room for room in ROOMS if module == room or module.startswith(room + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """``(line, name)`` of every import in the file, at any depth; relative imports are resolved against the file's
    package (``module``: the file's dotted name when it lies outside the tree). ``from a import b`` gives ``a.b``,
    which is module ``a.b`` when there is one and a name defined in ``a`` otherwise."""
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
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def package_files(name: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / name).rglob("*.py"))


@dataclass(frozen=True)
class ImportEdge:
    """Module ``source`` imports module ``target`` at ``where`` (``file:line``, relative to the tree's root)."""

    source: str
    target: str
    where: str


def import_graph(package: str, root: Path = ROOT) -> dict[str, dict[str, ImportEdge]]:
    """``graph[a][b]``: the first import of module ``b`` by module ``a``, both modules of ``package``.

    An imported name counts as the longest module of the package it starts with: ``from p import sub`` imports
    ``p.sub`` when that is a module, else ``p`` (its ``__init__``). Importing ``p.sub`` also runs ``p/__init__.py``,
    but that is no edge: a package ``__init__`` that imports its own submodules is normal, and only an explicit
    import of the ``__init__`` back from one of them closes a circle.
    """
    modules = {module_name(path, root): path for path in package_files(package, root)}
    graph: dict[str, dict[str, ImportEdge]] = {name: {} for name in modules}
    for source, path in modules.items():
        for line, name in imported_modules(path, source):
            target = name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != source and target not in graph[source]:
                where = f"{path.relative_to(root)}:{line}"
                graph[source][target] = ImportEdge(source, target, where)
    return graph


def strongly_connected(graph: dict[str, dict[str, ImportEdge]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, iterative): the sets of modules from
    each of which every other one of the set is reachable. A circle lies inside one component of 2 or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(sorted(graph[start])))]
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif successor not in index:
                index[successor] = low[successor] = len(index)
                stack.append(successor)
                on_stack.add(successor)
                work.append((successor, iter(sorted(graph[successor]))))
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
    return components


def import_cycles(package: str, root: Path = ROOT) -> list[list[ImportEdge]]:
    """One circle of imports per strongly connected component of ``package``'s module graph: the shortest one
    through the component's first module (by name), as its edges in order. Empty when the imports form no circle."""
    graph = import_graph(package, root)
    cycles = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        start = min(component)
        came_by: dict[str, ImportEdge] = {}
        queue = deque([start])
        while start not in came_by:  # breadth first, inside the component, until an edge leads back to start
            node = queue.popleft()
            for target, edge in sorted(graph[node].items()):
                if target in component and target not in came_by:
                    came_by[target] = edge
                    queue.append(target)
        cycle = [came_by[start]]
        while cycle[0].source != start:
            cycle.insert(0, came_by[cycle[0].source])
        cycles.append(cycle)
    return sorted(cycles, key=lambda cycle: cycle[0].source)


def describe(cycle: list[ImportEdge]) -> str:
    """``a -> b -> a (a.py:3 imports b; b.py:7 imports a)``."""
    chain = " -> ".join([edge.source for edge in cycle] + [cycle[0].source])
    edges = "; ".join(f"{edge.where} imports {edge.target}" for edge in cycle)
    return f"{chain} ({edges})"


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


@pytest.mark.parametrize("package", ["grpo_audio", "rewards"])
def test_modules_import_each_other_in_no_circle(package):
    """Covers every room: a circle inside a room, or across rooms of one rank, is a circle of the package."""
    assert [describe(cycle) for cycle in import_cycles(package)] == []


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / "planted" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "planted" / name).write_text(text)


def test_the_check_names_a_planted_circle(tmp_path):
    """Three modules in a circle, through a submodule named by ``from package import``, a lazy relative import
    and a plain dotted import; a fourth module outside the circle is not named."""
    _plant(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import os\n\nfrom planted import b\n",
            "b.py": "def f():\n    from .c import VALUE\n    return VALUE\n",
            "c.py": "import planted.a\n\nVALUE = 1\n",
            "d.py": "from planted.a import b\n",
        },
    )
    assert import_cycles("planted", tmp_path) == [
        [
            ImportEdge("planted.a", "planted.b", "planted/a.py:3"),
            ImportEdge("planted.b", "planted.c", "planted/b.py:2"),
            ImportEdge("planted.c", "planted.a", "planted/c.py:1"),
        ]
    ]
    assert describe(import_cycles("planted", tmp_path)[0]) == (
        "planted.a -> planted.b -> planted.c -> planted.a (planted/a.py:3 imports planted.b; "
        "planted/b.py:2 imports planted.c; planted/c.py:1 imports planted.a)"
    )


def test_the_check_names_a_circle_through_a_package_init(tmp_path):
    """A submodule that imports a name of its package's ``__init__``, which imports the submodule back."""
    _plant(
        tmp_path,
        {
            "__init__.py": "from planted.core import run\n\nVERSION = 1\n",
            "core.py": "from . import VERSION\n\n\ndef run():\n    return VERSION\n",
        },
    )
    assert [describe(cycle) for cycle in import_cycles("planted", tmp_path)] == [
        "planted -> planted.core -> planted (planted/__init__.py:1 imports planted.core; "
        "planted/core.py:1 imports planted)"
    ]


def test_the_check_passes_a_planted_package_without_a_circle(tmp_path):
    """An ``__init__`` importing its submodules, which import one another one way only (top level, lazily,
    relatively), and a sub-package: no circle."""
    _plant(
        tmp_path,
        {
            "__init__.py": "from planted.a import A\nfrom planted.b import B\n",
            "a.py": "from planted import b\nfrom planted.sub import leaf\n\nA = 1\n",
            "b.py": "def f():\n    from .sub.leaf import LEAF\n    return LEAF\n\n\nB = 2\n",
            "sub/__init__.py": "",
            "sub/leaf.py": "import json\n\nLEAF = 3\n",
        },
    )
    graph = import_graph("planted", tmp_path)
    assert {source: sorted(targets) for source, targets in graph.items()} == {
        "planted": ["planted.a", "planted.b"],
        "planted.a": ["planted.b", "planted.sub.leaf"],
        "planted.b": ["planted.sub.leaf"],
        "planted.sub": [],
        "planted.sub.leaf": [],
    }
    assert import_cycles("planted", tmp_path) == []
