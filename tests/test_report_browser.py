"""The rollout browser (``report/rollouts.html``): grouping, step capping and escaping in Python, then the page
itself in headless Chromium: no console errors, every ``<audio>`` points at an existing clip (and one plays),
each filter hides exactly the rows it should, and a screenshot lands in ``bench/results/rollout_browser.png``."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.headless_chromium import CHROMIUM, open_chromium

from grpo_audio.evaluation.browser import groups, highlight, pick_steps, render_browser

SCREENSHOT = Path(__file__).resolve().parents[1] / "bench" / "results" / "rollout_browser.png"
THINK = "<think>The tone is {0}; I hear it clearly.</think><answer>{1}</answer>"


def _record(step, pid, audio, completion, accuracy, fmt, advantage, **extra) -> dict:
    scored = accuracy is not None
    return {
        "step": step,
        "prompt_id": pid,
        "audio": str(audio),
        "completion": completion,
        "rewards": {"accuracy": accuracy, "format": fmt},
        "R_total": accuracy + 0.1 * fmt if scored else None,
        "unscored": None if scored else "accuracy: judge timed out",
        "failed": {} if scored else {"accuracy": "judge timed out"},
        "advantage": advantage,
        "length": len(completion.split()),
        "finish_reason": "stop",
        "rank": 0,
        **extra,
    }


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A hand-made run: 2 steps x 2 groups of G=4 (and a group dynamic sampling dropped at step 2), real WAV clips
    outside the run directory."""
    clips = tmp_path / "clips dir"  # a space: the src must be URL-quoted
    clips.mkdir()
    audio = {}
    for pid, freq in [("q0", 300.0), ("q1", 1500.0), ("q2", 800.0)]:
        t = np.arange(8000) / 16000
        audio[pid] = clips / f"{pid}.wav"
        sf.write(audio[pid], (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, subtype="PCM_16")
    q = {"question": "Is the tone high or low?", "choices": ["high", "low"], "answer": "low"}
    records = [
        # step 1, q0: mixed (two wrong, one format failure); question text logged
        _record(1, "q0", audio["q0"], THINK.format("low", "low"), 1, 1, 0.9, **q),
        _record(1, "q0", audio["q0"], THINK.format("high", "high"), 0, 1, -0.9, **q),
        _record(1, "q0", audio["q0"], "low", 1, 0, 0.8, **q),
        _record(1, "q0", audio["q0"], THINK.format("high", "<script>alert(1)</script>"), 0, 1, -0.9, **q),
        # step 1, q1: every answer wrong, same R_total: zero variance; an older run without question fields
        *[_record(1, "q1", audio["q1"], THINK.format("low", "low"), 0, 1, 0.0) for _ in range(4)],
        # step 2, q0: one unscored completion
        _record(2, "q0", audio["q0"], THINK.format("low", "low"), 1, 1, 0.5, **q),
        _record(2, "q0", audio["q0"], THINK.format("low", "low"), 1, 1, 0.5, **q),
        _record(2, "q0", audio["q0"], THINK.format("high", "high"), 0, 1, -1.0, **q),
        _record(2, "q0", audio["q0"], THINK.format("low", "low"), None, 1, 0.0, **q),
        # step 2, q2: every answer right: zero variance
        *[_record(2, "q2", audio["q2"], THINK.format("mid", "two"), 1, 1, 0.0) for _ in range(4)],
        # step 2, q1 again, from dynamic sampling's second round: dropped (no advantage: it never trained)
        *[
            _record(
                2, "q1", audio["q1"], THINK.format("high", "high"), 1, 1, None, round=1, dropped="zero reward variance"
            )
            for _ in range(4)
        ],
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = [{"step": s, "reward": 0.5, "rewards/accuracy/mean": 0.5, "kl": 0.0, "entropy": 1.0} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


def _rollouts(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]


def test_groups_are_consecutive_records_of_one_step_and_prompt(run_dir):
    found = groups(_rollouts(run_dir))
    shape = [(g.step, g.prompt_id, len(g.records)) for g in found]
    assert shape == [(1, "q0", 4), (1, "q1", 4), (2, "q0", 4), (2, "q2", 4), (2, "q1", 4)]
    assert [g.zero_variance for g in found] == [False, True, False, True, True]
    assert [g.dropped for g in found] == [None, None, None, None, "zero reward variance"]


def test_steps_are_thinned_evenly_to_stay_under_the_cap(run_dir):
    many = [dict(r, step=s) for s in range(1, 11) for r in _rollouts(run_dir)[:8]]  # 10 steps x 2 groups
    assert pick_steps(groups(many), None, 100) == list(range(1, 11))
    assert pick_steps(groups(many), None, 8) == [1, 4, 7, 10]
    assert pick_steps(groups(many), None, 3) == [10]
    assert pick_steps(groups(many), [2, 3, 99], 100) == [2, 3]
    page = render_browser(run_dir, run_dir / "report", many, max_groups=8)
    assert page.count("<section class='group'") == 8 and "8 of 20 groups: steps 1, 4, 7, 10 of 10 logged" in page


def test_text_is_escaped_and_tags_highlighted():
    out = highlight("a<b <think>x & y</think> <answer><i>B</i></answer> <think>open")
    assert out == (
        "a&lt;b <span class='tag'>&lt;think&gt;</span><span class='think'>x &amp; y</span>"
        "<span class='tag'>&lt;/think&gt;</span> <span class='tag'>&lt;answer&gt;</span><span class='answer'>"
        "&lt;i&gt;B&lt;/i&gt;</span><span class='tag'>&lt;/answer&gt;</span> &lt;think&gt;open"
    )


_VISIBLE = """(() => {
  const shown = (sel) => [...document.querySelectorAll(sel)].filter((e) => e.getClientRects().length > 0).length;
  return [shown('.group'), shown('tr.completion')];
})()"""


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium package (/usr/bin/chromium)")
def test_rollout_browser_in_headless_chromium(run_dir, tmp_path):
    from grpo_audio.cli import main

    assert main(["report", str(run_dir)]) == 0
    page_path = run_dir / "report" / "rollouts.html"
    assert "href='rollouts.html'" in (run_dir / "report" / "index.html").read_text()
    records = _rollouts(run_dir)
    with open_chromium(tmp_path / "profile") as page:
        page.open(page_path.as_uri())
        assert page.evaluate("document.title").startswith("rollouts")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(SCREENSHOT)
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        sources = page.evaluate("[...document.querySelectorAll('audio')].map((a) => a.src)")
        assert len(sources) == 5  # one clip per group
        for src in sources:
            url = urllib.parse.urlparse(src)
            assert url.scheme == "file" and Path(urllib.parse.unquote(url.path)).is_file(), src
        duration = page.evaluate(
            """new Promise((done) => {
                 const a = document.querySelector('audio');
                 a.preload = 'metadata';
                 a.onloadedmetadata = () => done(a.duration);
                 a.onerror = () => done(-1);
                 a.load();
               })"""
        )
        assert duration == pytest.approx(0.5, abs=0.01)  # the browser itself reads the clip

        assert page.evaluate(_VISIBLE) == [5, 20]
        assert page.evaluate("document.body.innerText").count("<script>alert(1)</script>") == 1
        wrong = [i for i, r in enumerate(records) if r["rewards"]["accuracy"] == 0]
        expected = {
            "wrong": [len({i // 4 for i in wrong}), len(wrong)],  # groups are runs of 4 records
            "unscored": [1, 1],
            "format": [1, 1],
            "zero-variance": [3, 12],
            "dropped": [1, 4],
        }
        assert expected["wrong"] == [3, 7]
        for name, shown in expected.items():
            box = f"document.querySelector(\"#filters input[value='{name}']\").click()"
            page.evaluate(box)
            assert page.evaluate(_VISIBLE) == shown, name
            page.evaluate(box)  # unchecked again
            assert page.evaluate(_VISIBLE) == [5, 20], name
        # filters combine: wrong answers within zero-variance groups
        for name in ("wrong", "zero-variance"):
            page.evaluate(f"document.querySelector(\"#filters input[value='{name}']\").click()")
        assert page.evaluate(_VISIBLE) == [1, 4]
        assert page.evaluate("document.getElementById('count').textContent") == "1 groups, 4 completions shown"
        assert page.errors == []
