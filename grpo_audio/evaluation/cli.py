"""``grpo-audio eval``: benchmark accuracy with the official scoring rules, and ``grpo-audio eval compare``.

    grpo-audio eval RECIPE --model PATH [--benchmark FILE --format mmau|mmar|mmsu|jsonl|avqa|hf --root DIR]
                    [--out DIR --samples K --temperature T --max-new-tokens N --batch-size B --template NAME
                     --rule mmau|mmsu --max-samples N --set KEY=VALUE ...]
    grpo-audio eval compare RUN_A RUN_B

The model is the recipe's ``model`` section with ``source: pretrained`` and ``path`` = ``--model`` (a directory this
harness saved, e.g. ``runs/x/final_model``). Without RECIPE, a model inside a run directory is evaluated with the
recipe it was trained with (``RUN/recipe.yaml``), else with the embedded defaults, and with the settings its
directory records (below); ``--set model.audio_ablation=silence`` replaces every clip by silence of the same
length. The data is ``--benchmark`` (format from ``--format`` or guessed; audio relative to ``--root``, default the
file's directory) or, without it, the held-out split of the run the model sits in (``RUN/data/heldout/
manifest.jsonl``, the first command's); with neither, eval refuses: it never scores the training data by default.
The recipe's ``eval`` section (evaluation during training) plays no part. The recipe's audio policy
(``data.on_bad_audio``, durations) applies; a skipped clip is a missing prediction, counted as wrong.
``data.max_samples`` of the recipe is ignored for a benchmark (``--max-samples`` limits a quick run). A relative
path that does not exist is reported with the absolute path tried and what it was relative to.

Prompt, decoding and audio settings (template, ``max_new_tokens``, ``top_p``/``top_k``, ``text_only``,
``model.audio_ablation``, ``data.resampler``), first found wins:

    1. the flags: --template, --max-new-tokens, --set KEY=VALUE (``mmsu_v1``, MMSU's official wording, for MMSU)
    2. RECIPE, when given (all of it; the model directory's record is then not read)
    3. the model directory's ``grpo_audio_training.json`` (written with every final_model/ and initial_model/:
       the template it was trained with, kept whole, and the rollout and audio settings; see
       ``grpo_audio.model.training_settings``), so a model copied out of its run keeps them
    4. ``RUN/recipe.yaml`` next to the model directory
    5. the embedded defaults

One line says where each came from, e.g. ``eval: template short_cot_v1@v1, max_new_tokens 20, ... from
runs/x/final_model/grpo_audio_training.json; temperature 0 (greedy) from the default``. The temperature is the
evaluation's own (``--temperature``, default greedy), never the training one. A settings file that is there but
unusable is an error naming the file and the field.

Scoring: ``--rule``, else MMSU's letter rule for MMSU and MMAU's token rule on the extracted answer for the rest.
Decoding: greedy (``--temperature 0``, the default); ``--samples K`` with ``--temperature T > 0`` samples K answers
per item and reports pass@K next to the mean accuracy. Output directory (``--out``; default
``<model dir's parent>/eval/<model dir name>-<benchmark stem>-<greedy | T<t>-k<K>>[-silence]``, so evaluations that
decode differently never overwrite each other): see ``grpo_audio.evaluation.runner``.

Exit status: 0 done, 2 unusable input (bad recipe, data or arguments; one ``error:`` line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from grpo_audio.console import say
from grpo_audio.data.formats import FORMATS

# The scoring rules --rule accepts (grpo_audio.evaluation.scoring.RULES, checked equal by tests/test_eval.py): named
# here so that --help and argument errors need not import the rules, the recipe and torch (bench/bench_cli_start.py)
RULE_NAMES = ("mmau", "mmsu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo-audio eval",
        description="Evaluate a model on a benchmark file with the benchmark's official scoring rule "
        "('grpo-audio eval compare RUN_A RUN_B' compares two evaluations).",
    )
    parser.add_argument("recipe", nargs="?", help="recipe YAML (default: the embedded defaults)")
    parser.add_argument("--model", required=True, help="model directory saved by grpo-audio (e.g. runs/x/final_model)")
    parser.add_argument(
        "--benchmark", help="benchmark file (default: the held-out split of the run the model sits in)"
    )
    parser.add_argument("--format", choices=FORMATS, help="benchmark format (default: guessed from the file)")
    parser.add_argument("--root", help="directory the benchmark's audio paths are relative to")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--samples", type=int, default=1, help="answers per item (pass@K); default 1")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the trained rollout.max_completion_length")
    parser.add_argument("--batch-size", type=int, default=8, help="items per generate call (default 8)")
    parser.add_argument("--template", help="prompt template (default: mmsu_v1 for MMSU, else the trained one)")
    parser.add_argument("--rule", choices=RULE_NAMES, help="scoring rule (default: from the format)")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N usable items")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. --set data.on_bad_audio=skip")  # fmt: skip
    return parser


def _prepare(args):
    from grpo_audio.data.records import detect_format
    from grpo_audio.data.rows import DataError
    from grpo_audio.evaluation.runner import EvalSettings
    from grpo_audio.evaluation.scoring import FORMAT_RULES
    from grpo_audio.model.training_settings import read_training_settings
    from grpo_audio.paths import tried
    from grpo_audio.recipe import RecipeError, load_recipe
    from grpo_audio.recipe.loader import check_cross_section
    from grpo_audio.recipe.schema import EvalSection

    temperature = 0.0 if args.temperature is None else args.temperature
    if args.samples < 1:
        raise RecipeError(f"--samples {args.samples}: must be at least 1")
    if temperature < 0:
        raise RecipeError(f"--temperature {temperature}: must be >= 0")
    if args.samples > 1 and temperature == 0:
        raise RecipeError("--samples > 1 needs --temperature > 0 (greedy decoding gives the same answer K times)")
    if args.batch_size < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise RecipeError("--batch-size and --max-new-tokens must be at least 1")
    model_dir = Path(args.model)
    trained = None if args.recipe else read_training_settings(model_dir)
    run_recipe = None if args.recipe else trained_recipe(model_dir)
    # The model directory's record goes in as overrides ahead of --set, which beats it; the training temperature
    # stays out (the evaluation's is --temperature)
    recorded = [] if trained is None else [f"{k}={json.dumps(v)}" for k, v in trained.recipe_values().items()]
    recorded = [item for item in recorded if not item.startswith("rollout.temperature=")]
    recipe = load_recipe(args.recipe or run_recipe, recorded + args.overrides)
    recipe.model = dataclasses.replace(recipe.model, source="pretrained", path=str(args.model))
    # The training-time eval section describes evaluation during training; it has no say here (it would be
    # checked against the benchmark's data source below, and refuse a synthetic split for a JSONL benchmark)
    recipe.eval = EvalSection()
    # Evaluation trains nothing: the training-only checks (a cold start or a KL reference on a pretrained model)
    # must not refuse a training recipe reused to evaluate its own model
    recipe.coldstart = dataclasses.replace(recipe.coldstart, steps=0)
    recipe.trainer = {k: v for k, v in recipe.trainer.items() if k != "beta"}
    if not args.benchmark:
        if args.format or args.root:
            raise RecipeError("--format and --root describe --benchmark, which is not given")
        if not model_dir.is_dir():
            raise RecipeError(f"model.path: directory not found: {args.model}{tried(args.model)}")
        args.benchmark, args.format = str(heldout_split(model_dir)), "jsonl"
    if args.benchmark:
        fmt = args.format or detect_format(args.benchmark)
        if fmt is None:
            raise DataError(f"{args.benchmark}: cannot tell the benchmark format from its first record; pass --format")
        recipe.data = dataclasses.replace(
            recipe.data, source=fmt, path=str(args.benchmark), root=args.root, max_samples=args.max_samples
        )
    check_cross_section(recipe)
    sources = SettingSources(args, trained, run_recipe)
    template, template_source = _template(args, recipe, trained, sources)
    settings = EvalSettings(
        rule=args.rule or FORMAT_RULES[recipe.data.source],
        samples=args.samples,
        temperature=temperature,
        top_p=recipe.rollout.top_p,
        top_k=recipe.rollout.top_k,
        max_new_tokens=args.max_new_tokens or recipe.rollout.max_completion_length,
        batch_size=args.batch_size,
        text_only=recipe.rollout.text_only,
    )
    print(settings_line(args, recipe, settings, template.ident, template_source, sources), flush=True)
    if args.out:
        out = Path(args.out)
    else:
        model = model_dir.resolve()
        stem = Path(recipe.data.path).stem if recipe.data.path else recipe.data.source
        out = model.parent / "eval" / f"{model.name}-{stem}-{decoding_label(settings, recipe.model.audio_ablation)}"
    return recipe, template, settings, out


class SettingSources:
    """Where a recipe key's value came from, by the precedence of the module docstring."""

    def __init__(self, args, trained, run_recipe: str | None) -> None:
        self.set_keys = {item.partition("=")[0].strip() for item in args.overrides}
        self.recipe = args.recipe
        self.trained = trained
        self.run_recipe = run_recipe

    def __call__(self, key: str) -> str:
        if key in self.set_keys:
            return "--set"
        if self.recipe:
            return f"recipe {self.recipe}"
        if self.trained is not None and (key == "prompt.template" or key in self.trained.recipe_values()):
            return self.trained.path
        if self.run_recipe:
            return self.run_recipe
        return "the embedded defaults"


def _template(args, recipe, trained, sources: SettingSources):
    """``(PromptTemplate, where it came from)``: the trained template is the copy kept in the model directory, so a
    template renamed, edited or not installed here is still the one the model saw."""
    from grpo_audio.data.prompting import load_template, template_from_text

    if args.template:
        return load_template(args.template), "--template"
    if recipe.data.source == "mmsu":
        return load_template("mmsu_v1"), "MMSU's official prompt"
    source = sources("prompt.template")
    if trained is not None and source == trained.path:
        return template_from_text(trained.template_content, trained.path), source
    return load_template(recipe.prompt.template), source


def settings_line(args, recipe, settings, template_ident: str, template_source: str, sources: SettingSources) -> str:
    """One line naming each setting that shapes the answers and where it came from, grouped by source, e.g.
    ``eval: template short_cot_v1@v1 and max_new_tokens 20 from X; temperature 0 (greedy) from the default``."""
    items = [(f"template {template_ident}", template_source)]
    tokens_source = "--max-new-tokens" if args.max_new_tokens else sources("rollout.max_completion_length")
    items.append((f"max_new_tokens {settings.max_new_tokens}", tokens_source))
    if settings.greedy:
        items.append(("temperature 0 (greedy)", "--temperature" if args.temperature is not None else "the default"))
    else:
        items.append((f"temperature {settings.temperature:g}", "--temperature"))
        items.append((f"top_p {settings.top_p:g}", sources("rollout.top_p")))
        items.append((f"top_k {settings.top_k}", sources("rollout.top_k")))
    items.append((f"text_only {json.dumps(settings.text_only)}", sources("rollout.text_only")))
    items.append((f"audio_ablation {recipe.model.audio_ablation}", sources("model.audio_ablation")))
    items.append((f"resampler {recipe.data.resampler}", sources("data.resampler")))
    groups: dict[str, list[str]] = {}
    for text, source in items:
        groups.setdefault(source, []).append(text)
    return "eval: " + "; ".join(f"{_listed(texts)} from {source}" for source, texts in groups.items())


def _listed(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} and {texts[-1]}"


def trained_recipe(model_dir: Path) -> str | None:
    """The recipe a model was trained with, when ``model_dir`` sits in a run directory (``RUN/final_model``,
    ``RUN/trainer/checkpoint-N``): its prompt template, completion length and sampling are the ones to evaluate
    with. None (the embedded defaults) otherwise."""
    for run in (model_dir.parent, model_dir.parent.parent):
        recipe = run / "recipe.yaml"
        if recipe.is_file() and (run / "run.json").is_file():
            say(f"using the recipe the model was trained with, {recipe}")
            return str(recipe)
    return None


def heldout_split(model_dir: Path) -> Path:
    """The held-out split of the run ``model_dir`` sits in (``RUN/data/heldout/manifest.jsonl``), the benchmark when
    none is named; a ``RecipeError`` when there is none: the training data is never evaluated by default."""
    from grpo_audio.recipe import RecipeError

    for run in (model_dir.parent, model_dir.parent.parent):
        manifest = run / "data" / "heldout" / "manifest.jsonl"
        if manifest.is_file() and (run / "run.json").is_file():
            say(f"no --benchmark: the run's held-out split, {manifest}")
            return manifest
    raise RecipeError(
        f"no --benchmark, and {model_dir} is not in a run directory with a held-out split (RUN/data/heldout/"
        "manifest.jsonl): name the file to evaluate with --benchmark (the training data is never evaluated by default)"
    )


def decoding_label(settings, ablation: str) -> str:
    """Part of the default output folder, so evaluations of one model that decode differently never overwrite
    each other: ``greedy``, or ``T0.7-k8`` for 8 samples at temperature 0.7; ``-silence`` for an audio ablation."""
    label = "greedy" if settings.temperature == 0 else f"T{settings.temperature:g}-k{settings.samples}"
    return label if ablation == "none" else f"{label}-{ablation}"


def compare_main(argv: list[str]) -> int:
    from grpo_audio.evaluation.metrics import compare_table, load_metrics

    parser = argparse.ArgumentParser(prog="grpo-audio eval compare", description="Compare two evaluation runs.")
    parser.add_argument("run_a", help="evaluation output directory (or its metrics.json)")
    parser.add_argument("run_b", help="evaluation output directory (or its metrics.json)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        a, b = load_metrics(args.run_a), load_metrics(args.run_b)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(compare_table(a, b, args.run_a, args.run_b), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from grpo_audio.audio.io import AudioLoadError
    from grpo_audio.data.rows import DataError
    from grpo_audio.evaluation.runner import evaluate
    from grpo_audio.model.checkpoint_load import CheckpointError
    from grpo_audio.recipe import RecipeError

    try:
        recipe, template, settings, out = _prepare(args)
        evaluate(recipe, template, settings, out)
    except (RecipeError, DataError, AudioLoadError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
