"""The rollout browser: ``RUN_DIR/report/rollouts.html``, every group of G completions side by side with its audio.

Reads the records of ``rollouts.jsonl`` (one per completion: step, prompt_id, audio, completion, rewards
{term: value or null}, R_total, unscored, failed, advantage, length, finish_reason, and, from newer runs, question,
choices, answer). A group is a run of consecutive records with the same step and prompt_id (the trainer logs the G
completions of a prompt one after the other).

The page is one self-contained HTML file (inline CSS and JS, no external assets, no server): per group the clip as
``<audio controls src=...>`` with a path relative to the page's folder, the question, choices and gold answer, then
one row per completion with ``<think>``/``<answer>`` highlighted, every reward term, R_total and advantage.
Checkboxes keep only wrong answers (``accuracy`` term 0), unscored completions (R_total null), format failures
(``format`` term 0) or zero-variance groups (every R_total of the group equal, null counted as a value); checked
filters combine (a completion must match all of them), and a group with no completion left is hidden.

The page stays bounded: at most ``max_groups`` groups. When the chosen steps hold more, evenly spaced steps (the
first and the last included) are kept and the page says which.
"""

from __future__ import annotations

import html
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

MAX_GROUPS = 150
_TAGGED = re.compile(r"<(think|answer)>(.*?)</\1>", re.DOTALL)


@dataclass
class Group:
    step: int
    prompt_id: object
    records: list[dict]

    @property
    def zero_variance(self) -> bool:
        return len({r.get("R_total") for r in self.records}) == 1

    @property
    def dropped(self) -> str | None:
        """Why dynamic sampling left this group out of the loss (its records' ``dropped``), or None."""
        return self.records[0].get("dropped")


def groups(rollouts: list[dict]) -> list[Group]:
    """Consecutive records with the same (step, prompt_id), in file order."""
    out: list[Group] = []
    for record in rollouts:
        last = out[-1] if out else None
        if last and last.step == record["step"] and last.prompt_id == record.get("prompt_id"):
            last.records.append(record)
        else:
            out.append(Group(record["step"], record.get("prompt_id"), [record]))
    return out


def flags(record: dict) -> dict[str, bool]:
    """The row filters a completion matches: wrong, unscored, format (failure)."""
    rewards = record.get("rewards") or {}
    return {
        "wrong": rewards.get("accuracy") == 0,
        "unscored": record.get("R_total") is None,
        "format": rewards.get("format") == 0,
    }


def pick_steps(all_groups: list[Group], steps: list[int] | None, max_groups: int) -> list[int]:
    """The steps to show: ``steps`` (or every step), thinned to evenly spaced ones when over ``max_groups``."""
    per_step: dict[int, int] = {}
    for group in all_groups:
        per_step[group.step] = per_step.get(group.step, 0) + 1
    wanted = sorted(per_step) if steps is None else [s for s in sorted(set(steps)) if s in per_step]
    if sum(per_step[s] for s in wanted) <= max_groups:
        return wanted
    room = max(1, max_groups // max(per_step[s] for s in wanted))
    if room == 1:
        return [wanted[-1]]
    # evenly spaced indices from the first to the last step
    return sorted({wanted[round(i * (len(wanted) - 1) / (room - 1))] for i in range(room)})


def highlight(text: str) -> str:
    """Escaped ``text`` with each closed ``<think>...</think>`` / ``<answer>...</answer>`` wrapped in spans."""
    parts, end = [], 0
    for match in _TAGGED.finditer(text):
        tag, body = match.group(1), match.group(2)
        parts.append(html.escape(text[end : match.start()]))
        parts.append(
            f"<span class='tag'>&lt;{tag}&gt;</span><span class='{tag}'>{html.escape(body)}</span>"
            f"<span class='tag'>&lt;/{tag}&gt;</span>"
        )
        end = match.end()
    parts.append(html.escape(text[end:]))
    return "".join(parts)


def audio_html(audio: str | None, page_dir: Path) -> str:
    """An ``<audio>`` element pointing at the clip relative to ``page_dir``, or a note when the file is missing
    (a dangling src would only be a load error in the console)."""
    if not audio:
        return "<p class='note'>no audio path in the record</p>"
    path = Path(audio)
    if not path.is_file():
        return f"<p class='note'>audio not found: {html.escape(str(audio))}</p>"
    relative = os.path.relpath(path.resolve(), page_dir.resolve())
    src = urllib.parse.quote(Path(relative).as_posix())
    return f"<audio controls preload='none' src='{html.escape(src)}'></audio>"


def _number(value) -> str:
    if value is None:
        return "<span class='null'>null</span>"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _field(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None:
        return "<span class='null'>not logged</span>"
    if isinstance(value, list):
        return "<ol type='A'>" + "".join(f"<li>{html.escape(str(v))}</li>" for v in value) + "</ol>"
    return html.escape(str(value))


def _group_html(group: Group, terms: list[str], page_dir: Path) -> str:
    first = group.records[0]
    zero = group.zero_variance
    head = (
        f"<section class='group' data-step='{group.step}' data-zero-variance='{int(zero)}' "
        f"data-dropped='{int(group.dropped is not None)}'>"
        f"<h3>step {group.step} · prompt {html.escape(str(group.prompt_id))}"
        + (" <span class='badge'>zero variance</span>" if zero else "")
        + (f" <span class='badge'>dropped: {html.escape(group.dropped)}</span>" if group.dropped else "")
        + "</h3>"
        + audio_html(first.get("audio"), page_dir)
        + f"<dl><dt>question</dt><dd>{_field(first, 'question')}</dd><dt>choices</dt><dd>{_field(first, 'choices')}"
        f"</dd><dt>gold answer</dt><dd>{_field(first, 'answer')}</dd></dl>"
    )
    header = "".join(f"<th>{html.escape(t)}</th>" for t in terms)
    rows = [
        f"<table><tr><th>#</th><th>completion</th>{header}<th>R_total</th><th>advantage</th><th>length</th>"
        "<th>finish</th><th>why unscored / failed</th></tr>"
    ]
    for i, record in enumerate(group.records):
        marks = flags(record)
        data = " ".join(f"data-{name}='{int(on)}'" for name, on in marks.items())
        classes = " ".join(name for name, on in marks.items() if on)
        rewards = record.get("rewards") or {}
        cells = "".join(f"<td>{_number(rewards.get(t))}</td>" for t in terms)
        why = record.get("unscored") or "; ".join(f"{k}: {v}" for k, v in (record.get("failed") or {}).items())
        rows.append(
            f"<tr class='completion {classes}' {data}><td>{i}</td><td><pre>{highlight(record.get('completion', ''))}"
            f"</pre></td>{cells}<td>{_number(record.get('R_total'))}</td><td>{_number(record.get('advantage'))}</td>"
            f"<td>{_number(record.get('length'))}</td><td>{html.escape(str(record.get('finish_reason')))}</td>"
            f"<td>{html.escape(why)}</td></tr>"
        )
    rows.append("</table></section>")
    return head + "".join(rows)


_STYLE = """
body{font-family:sans-serif;margin:1.5em}
#filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ccc;z-index:1}
#filters label{margin-right:1.2em}
.group{border:1px solid #bbb;border-radius:6px;margin:1em 0;padding:.5em 1em}
.group h3{margin:.2em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;margin:.5em 0}dt{font-weight:bold}dd{margin:0}
dd ol{margin:0;padding-left:1.5em}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:12px;text-align:left}
pre{white-space:pre-wrap;margin:0;font-size:12px}
.tag{color:#888}.think{background:#eef3ff}.answer{background:#fff2b3;font-weight:bold}
tr.wrong td:first-child{border-left:4px solid #d33}tr.unscored{background:#f4f4f4}
tr.format td:nth-child(2){outline:2px dashed #e80}
.badge{background:#e80;color:#fff;border-radius:4px;padding:0 .4em;font-size:12px}
.null,.note{color:#999;font-style:italic}
[hidden]{display:none!important}
"""

# Filters are data attributes on the rows (data-wrong, data-unscored, data-format) and on the groups
# (data-zero-variance, data-dropped); hiding uses the hidden attribute so a DOM check can count what is shown.
_SCRIPT = """
(function () {
  var boxes = document.querySelectorAll('#filters input[type=checkbox]');
  var step = document.getElementById('step');
  function apply() {
    var on = [];
    boxes.forEach(function (b) { if (b.checked) on.push(b.value); });
    var groupFilters = ['zero-variance', 'dropped'];
    var rowFilters = on.filter(function (f) { return groupFilters.indexOf(f) < 0; });
    var shownGroups = 0, shownRows = 0;
    document.querySelectorAll('.group').forEach(function (g) {
      var groupOk = (on.indexOf('zero-variance') < 0 || g.dataset.zeroVariance === '1')
        && (on.indexOf('dropped') < 0 || g.dataset.dropped === '1')
        && (step.value === '' || g.dataset.step === step.value);
      var rows = 0;
      g.querySelectorAll('tr.completion').forEach(function (r) {
        var ok = groupOk && rowFilters.every(function (f) { return r.dataset[f] === '1'; });
        r.hidden = !ok;
        if (ok) rows++;
      });
      g.hidden = rows === 0;
      if (rows) { shownGroups++; shownRows += rows; }
    });
    document.getElementById('count').textContent = shownGroups + ' groups, ' + shownRows + ' completions shown';
  }
  boxes.forEach(function (b) { b.addEventListener('change', apply); });
  step.addEventListener('change', apply);
  apply();
})();
"""


def render_browser(
    run_dir: Path, page_dir: Path, rollouts: list[dict], steps: list[int] | None = None, max_groups: int = MAX_GROUPS
) -> str:
    """The page's HTML for ``rollouts`` (records of ``rollouts.jsonl``), audio paths relative to ``page_dir``."""
    everything = groups(rollouts)
    shown_steps = pick_steps(everything, steps, max_groups)
    keep = set(shown_steps)
    chosen = [g for g in everything if g.step in keep]
    terms = sorted({t for g in chosen for r in g.records for t in (r.get("rewards") or {})})
    all_steps = sorted({g.step for g in everything})
    note = (
        f"<p class='note'>{len(chosen)} of {len(everything)} groups: steps {', '.join(map(str, shown_steps))} of "
        f"{len(all_steps)} logged (at most {max_groups} groups per page; pick steps with "
        "<code>grpo-audio report --steps</code>).</p>"
        if len(chosen) < len(everything)
        else ""
    )
    options = "".join(f"<option value='{s}'>step {s}</option>" for s in shown_steps)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>rollouts · {html.escape(str(run_dir))}</title><style>{_STYLE}</style></head><body>",
        # the name only: the full path is in the title, and the page (and its screenshot) stays the same elsewhere
        f"<h1>Rollouts of {html.escape(run_dir.name)}</h1>",
        "<p class='note'>rows: red edge = wrong answer, dashed completion = format failure, grey = unscored; "
        "<code>&lt;answer&gt;</code> in yellow, <code>&lt;think&gt;</code> in blue.</p>",
        note,
        "<div id='filters'><select id='step'><option value=''>all steps</option>" + options + "</select> ",
        "<label><input type='checkbox' value='wrong'> wrong answers (accuracy 0)</label>",
        "<label><input type='checkbox' value='unscored'> unscored (R_total null)</label>",
        "<label><input type='checkbox' value='format'> format failures (format 0)</label>",
        "<label><input type='checkbox' value='zero-variance'> zero-variance groups</label>",
        "<label><input type='checkbox' value='dropped'> dropped by dynamic sampling</label>",
        "<span id='count'></span></div>",
        *(_group_html(g, terms, page_dir) for g in chosen),
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_browser(run_dir: Path, out_dir: Path, rollouts: list[dict], steps: list[int] | None = None) -> Path:
    """Write ``out_dir/rollouts.html`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "rollouts.html"
    page.write_text(render_browser(run_dir, out_dir, rollouts, steps), "utf-8")
    return page
