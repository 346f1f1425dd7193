"""Accuracy overall and per slice (task, category, sub-category, difficulty, ...), the markdown table, and the
side-by-side comparison of two evaluation runs.

Per item with K samples (K = 1 for greedy decoding): accuracy = correct samples / samples (the mean over items of
each item's share of correct samples), pass@K = share of items with at least one correct sample. Items whose clip
was skipped, and outputs with no answer, are ``missing``; outputs naming no single choice are ``unparsed``; both count
as wrong (in the denominator) and are reported.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from grpo_audio.data.formats import CATEGORY_KEYS


def _stats(items: list[list[dict]]) -> dict:
    samples = [s for item in items for s in item]
    correct = sum(bool(s["correct"]) for s in samples)
    return {
        "items": len(items),
        "samples": len(samples),
        "correct": correct,
        "accuracy": correct / len(samples) if samples else 0.0,
        "pass_at_k": sum(any(s["correct"] for s in item) for item in items) / len(items) if items else 0.0,
        "unparsed": sum(s["status"] == "unparsed" for s in samples),
        "missing": sum(s["status"] == "missing" for s in samples),
    }


def compute_metrics(records: list[dict], k: int) -> dict:
    """``records``: one per (item, sample) with ``id``, ``correct``, ``status`` and ``metadata``. Returns
    ``{"k", "overall": stats, "groups": {key: {value: stats}}}`` with the slice values sorted."""
    items: OrderedDict[str, list[dict]] = OrderedDict()
    for record in records:
        items.setdefault(str(record["id"]), []).append(record)
    groups: dict[str, dict[str, dict]] = {}
    for key in CATEGORY_KEYS:
        if not any(key in item[0]["metadata"] for item in items.values()):
            continue
        by_value: dict[str, list[list[dict]]] = {}
        for item in items.values():
            by_value.setdefault(str(item[0]["metadata"].get(key, "(none)")), []).append(item)
        groups[key] = {value: _stats(by_value[value]) for value in sorted(by_value)}
    return {"k": k, "overall": _stats(list(items.values())), "groups": groups}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown_table(metrics: dict) -> str:
    """The result as markdown: a short header (benchmark, checksum, model, decoding) and one table row per slice."""
    bench, decoding, overall = metrics["benchmark"], metrics["decoding"], metrics["overall"]
    k = metrics["k"]
    mode = "greedy" if decoding["greedy"] else f"sampled, temperature {decoding['temperature']:g}"
    lines = [
        f"# Evaluation: {Path(bench['path']).name}",
        "",
        f"- benchmark: `{bench['path']}` (format {bench['format']}, sha256 `{bench['sha256']}`)",
        f"- model: `{metrics['model']}`",
        f"- prompt: {metrics['template']}; rule: {metrics['rule']}; decoding: {mode}, {k} sample(s) per item, "
        f"at most {decoding['max_new_tokens']} new tokens",
        f"- items: {overall['items']} ({metrics['skipped']['count']} with a skipped clip); unparsed predictions: "
        f"{overall['unparsed']}; missing: {overall['missing']} (both counted as wrong)",
        "- unparsed: the rule found no answer in the completion; missing: the item has no completion (its clip was "
        "skipped by the audio policy)",
    ]
    outside = bench.get("answers_outside_choices", 0)
    if outside:
        lines.append(f"- items whose gold answer is not among their choices: {outside} (scored by the rule, as the "
                     "official script does)")  # fmt: skip
    lines.append("")
    header = ["slice", "value", "items", "accuracy (%)"] + ([f"pass@{k} (%)"] if k > 1 else [])
    header += ["correct", "unparsed", "missing"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")

    def row(slice_name: str, value: str, s: dict) -> str:
        cells = [slice_name, value, str(s["items"]), _pct(s["accuracy"])] + ([_pct(s["pass_at_k"])] if k > 1 else [])
        cells += [str(s["correct"]), str(s["unparsed"]), str(s["missing"])]
        return "| " + " | ".join(cells) + " |"

    lines.append(row("**overall**", "all", overall))
    for key, values in metrics["groups"].items():
        for value, s in values.items():
            lines.append(row(key, value, s))
    return "\n".join(lines) + "\n"


def decoding_summary(metrics: dict) -> str:
    """``greedy``, or ``8 samples at temperature 0.7``, and the audio: ``audio as recorded`` or ``audio: silence``."""
    decoding = metrics["decoding"]
    mode = (
        "greedy" if decoding["greedy"] else f"{decoding['samples']} samples at temperature {decoding['temperature']:g}"
    )
    ablation = metrics.get("audio_ablation", "none")
    return f"{mode}, {'audio as recorded' if ablation == 'none' else f'audio: {ablation}'}"


def load_metrics(run: str | Path) -> dict:
    """``metrics.json`` of an evaluation output directory (or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (is this an evaluation output directory?)")
    return json.loads(path.read_text(encoding="utf-8"))


def compare_table(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Both runs side by side, slice by slice, with B - A in accuracy points."""
    lines = [
        f"{label}: {name}: model `{m['model']}`, {m['template']}, {decoding_summary(m)}, "
        f"benchmark sha256 `{m['benchmark']['sha256'][:16]}`"
        for label, name, m in (("A", name_a, a), ("B", name_b, b))
    ]
    if a["benchmark"]["sha256"] != b["benchmark"]["sha256"]:
        lines.append("warning: the two runs used different benchmark files; their numbers are not comparable")
    lines += [
        "",
        "| slice | value | A (%) | B (%) | delta (points) | items A | items B |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def row(slice_name: str, value: str, sa: dict | None, sb: dict | None) -> str:
        acc_a = _pct(sa["accuracy"]) if sa else "-"
        acc_b = _pct(sb["accuracy"]) if sb else "-"
        delta = f"{100 * (sb['accuracy'] - sa['accuracy']):+.2f}" if sa and sb else "-"
        items_a = str(sa["items"]) if sa else "-"
        items_b = str(sb["items"]) if sb else "-"
        return f"| {slice_name} | {value} | {acc_a} | {acc_b} | {delta} | {items_a} | {items_b} |"

    lines.append(row("**overall**", "all", a["overall"], b["overall"]))
    for key in list(dict.fromkeys([*a["groups"], *b["groups"]])):
        ga, gb = a["groups"].get(key, {}), b["groups"].get(key, {})
        for value in sorted(set(ga) | set(gb)):
            lines.append(row(key, value, ga.get(value), gb.get(value)))
    return "\n".join(lines) + "\n"
