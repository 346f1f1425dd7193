"""Run a model on a benchmark: rows -> prompts -> batched decoding (the recipe's engine) -> official scoring -> files.

Writes into the output directory:

    predictions.jsonl  one line per (item, sample): id, sample, completion, prediction, choice, status, correct,
                       answer, choices, metadata, finish_reason (skipped clips appear with status "missing")
    metrics.json       benchmark path + sha256 + format, model, template, rule, decoding settings, overall and
                       per-slice accuracy, skip counts
    metrics.md         the same as a markdown table (also printed)
    prompt.txt         one rendered prompt, exactly as the model saw it
    skipped.jsonl      rows whose clip the audio policy skipped (see grpo_audio.data.sources)

Every row is scored. A row whose gold answer is not among its choices (the older MMAR-meta.json has 5) is kept and
scored by the rule, as the official scripts score it (in practice wrong: an output naming a choice lacks the
answer's words); metrics.json counts them as ``benchmark.answers_outside_choices``. Training refuses such rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo_audio import __version__
from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.data.formats import OUTSIDE_FLAG
from grpo_audio.data.prompting import PromptTemplate, render_prompt
from grpo_audio.data.rows import AudioQuestion, DataError
from grpo_audio.data.sources import SkipReport, load_rows_for_recipe
from grpo_audio.evaluation.metrics import compute_metrics, markdown_table
from grpo_audio.evaluation.scoring import MISSING, score
from grpo_audio.files import sha256_file, write_jsonl
from grpo_audio.model.family import COVO_AUDIO, family_of_model
from grpo_audio.rollout.factory import build_rollout_engine
from grpo_audio.rollout.hf import SamplingSettings


@dataclass
class EvalSettings:
    rule: str = "mmau"
    samples: int = 1  # K completions per item (pass@K); 1 = the usual single answer
    temperature: float = 0.0  # 0 = greedy decoding (the benchmarks' protocol)
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    batch_size: int = 8  # items per generate call (each repeated K times)
    text_only: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _sampling(settings: EvalSettings) -> SamplingSettings:
    if settings.greedy:
        return SamplingSettings(max_new_tokens=settings.max_new_tokens, do_sample=False, text_only=settings.text_only)
    return SamplingSettings(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        do_sample=True,
        text_only=settings.text_only,
    )


def load_eval_rows(recipe, out_dir: Path) -> tuple[list[AudioQuestion], SkipReport]:
    """The benchmark rows of ``recipe.data`` (the audio policy applied; ``skipped.jsonl`` in ``out_dir``), every one
    with a gold answer. Rows whose answer is not among the choices (the older MMAR-meta.json has 5) are kept and
    scored by the official rule, as the official scripts do, rather than refused as training refuses them."""
    rows, report = load_rows_for_recipe(recipe, out_dir, answers_outside_choices="keep")
    check_eval_rows(rows, report)
    return rows, report


def check_eval_rows(rows: list[AudioQuestion], report: SkipReport) -> None:
    """Every row is scored: a row that could not be read would drop out of the total, one without a gold answer
    could not be scored (a skipped clip is fine: it counts as a wrong prediction)."""
    unreadable = [s for s in report.skipped if s.row is None]
    if unreadable:
        raise DataError(
            f"{report.data_file}: evaluation scores every row; {len(unreadable)} could not be read (first: "
            f"{unreadable[0].where}: {unreadable[0].message}); data.on_bad_row=skip applies to training only"
        )
    unanswered = [r.id for r in rows + [s.row for s in report.skipped] if r.answer is None]
    if unanswered:
        raise DataError(
            f"{report.data_file}: evaluation needs a gold answer on every row; {len(unanswered)} have none "
            f"(first: {unanswered[:5]})"
        )


def prompt_texts(
    rows: list[AudioQuestion], tokenizer, template: PromptTemplate, featurizer: AudioFeaturizer, family=COVO_AUDIO
):
    """Each row's full prompt text in ``family``'s layout (chat template, the clip's placeholders, question and
    choices)."""
    return [
        render_prompt(tokenizer, template, r.question, r.choices, featurizer.features(r.audio).n_placeholders, family)
        for r in rows
    ]


def predict(
    model,
    tokenizer,
    featurizer: AudioFeaturizer,
    engine,
    rows: list[AudioQuestion],
    prompt_ids: list[list[int]],
    rule: str,
    samples: int,
    batch_size: int,
    device: torch.device,
    on_batch=None,
) -> list[dict]:
    """One scored record per (row, sample): ``engine`` decodes ``samples`` completions of each row's prompt, in
    batches of ``batch_size`` rows, and the rule ``rule`` scores them (see ``_record``). ``on_batch(done)`` is told
    how many rows are done after each batch."""
    records: list[dict] = []
    for first in range(0, len(rows), batch_size):
        batch = rows[first : first + batch_size]
        ids = [p for p in prompt_ids[first : first + batch_size] for _ in range(samples)]
        audio = featurizer.rows([r.audio for r in batch for _ in range(samples)], model, device)
        result = engine.generate(model, ids, audio)
        texts = tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
        for i, row in enumerate(batch):
            for j in range(samples):
                n = i * samples + j
                records.append(_record(row, j, texts[n], result.finish_reasons[n], rule))
        if on_batch is not None:
            on_batch(first + len(batch))
    return records


def skipped_records(report: SkipReport, samples: int, rule: str) -> list[dict]:
    """A ``missing`` record per sample of every row whose clip the audio policy skipped (wrong, in the total)."""
    return [
        _record(skip.row, j, None, None, rule, skip_reason=skip.reason)
        for skip in report.skipped
        for j in range(samples)
    ]


def evaluate(recipe, template: PromptTemplate, settings: EvalSettings, out_dir: str | Path, echo=print) -> dict:
    """Evaluate ``recipe.model`` on ``recipe.data`` with ``template``; write the files above; return the metrics."""
    from grpo_audio.data.vocabulary import vocabulary_texts
    from grpo_audio.model.build import build_tokenizer_and_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, report = load_eval_rows(recipe, out)
    data_file = report.data_file
    bench_sha = sha256_file(data_file)
    tokenizer, model = build_tokenizer_and_model(recipe.model, recipe.run.seed, vocabulary_texts(rows, template))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    torch.manual_seed(recipe.run.seed)
    family = family_of_model(model)
    featurizer = AudioFeaturizer(
        reuse_embeddings=True,
        resampler=recipe.data.resampler,
        ablation=recipe.model.audio_ablation,
        front_end=family.front_end,
    )
    # The recipe's engine (HF generate or vLLM) with the evaluation's own decoding settings
    engine = build_rollout_engine(recipe, model, tokenizer, out)
    engine.sampling = _sampling(settings)
    if hasattr(engine, "sync_weights"):  # vLLM: make sure the engine holds this model's weights
        engine.sync_weights(model, 0)
    k = settings.samples
    prompts = prompt_texts(rows, tokenizer, template, featurizer, family)
    if prompts:
        (out / "prompt.txt").write_text(f"# template {template.ident}\n{prompts[0]}\n", encoding="utf-8")
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    start = time.perf_counter()

    def progress(done: int) -> None:
        echo(f"eval: {done}/{len(rows)} items ({time.perf_counter() - start:.1f} s)")

    records = predict(
        model, tokenizer, featurizer, engine, rows, prompt_ids, settings.rule, k, settings.batch_size, device, progress
    )
    records += skipped_records(report, k, settings.rule)
    write_jsonl(out / "predictions.jsonl", records, default=str)

    metrics = {
        "harness_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "benchmark": {
            "path": str(data_file),
            "sha256": bench_sha,
            "format": recipe.data.source,
            "root": recipe.data.root,
            "rows": len(rows) + len(report.skipped),
            "answers_outside_choices": _answers_outside_choices(rows, report),
        },
        "model": str(recipe.model.path or recipe.model.source),
        "template": template.ident,
        "audio_ablation": recipe.model.audio_ablation,
        "rule": settings.rule,
        "decoding": {
            "greedy": settings.greedy,
            "samples": k,
            "temperature": settings.temperature,
            "top_p": settings.top_p if not settings.greedy else None,
            "top_k": settings.top_k if not settings.greedy else None,
            "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size,
            "seed": recipe.run.seed,
            "engine": recipe.rollout.engine,
        },
        "skipped": {"count": len(report.skipped), "reasons": report.counts, "truncated": len(report.truncated)},
        **compute_metrics(records, k),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = markdown_table(metrics)
    (out / "metrics.md").write_text(table, encoding="utf-8")
    echo(table)
    echo(f"eval: wrote {out / 'predictions.jsonl'}, {out / 'metrics.json'}, {out / 'metrics.md'}")
    return metrics


def _answers_outside_choices(rows, report) -> int:
    """Items whose gold answer is not among their choices (kept, scored by the rule), skipped clips included."""
    items = rows + [s.row for s in report.skipped if s.row is not None]
    return sum(bool(r.metadata.get(OUTSIDE_FLAG)) for r in items)


def _record(row, sample: int, completion, finish_reason, rule: str, skip_reason: str | None = None) -> dict:
    scored = MISSING if completion is None else score(rule, completion, row.answer, row.choices)
    record = {
        "id": row.id,
        "sample": sample,
        "completion": completion,
        "prediction": scored.prediction,
        "choice": scored.choice,
        "status": scored.status,
        "correct": scored.correct,
        "answer": row.answer,
        "choices": row.choices,
        "audio": row.audio,
        "metadata": row.metadata,
        "finish_reason": finish_reason,
    }
    if skip_reason is not None:
        record["skip_reason"] = skip_reason
    return record
