"""`rewards score` end to end on temporary files."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.score_cli import main

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {"id": "q1", "question": "Who speaks?", "choices": ["Man", "Woman"], "answer": "Woman"}
RECIPE = """\
model: {source: tiny}
rollout: {num_generations: 2}
rewards:
  combiner: sum
  terms:
    - {name: accuracy, weight: 1.0}
    - {name: format, weight: 1.0}
    - {name: consistency_rule, weight: 0.5, label: consistency}
"""


@pytest.fixture
def files(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    rows = [
        {"completion": "<think>High voice, so a woman.</think><answer>Woman</answer>", "sample": SAMPLE},
        {"completion": "<think>Deep voice: a man.</think><answer>Man</answer>", "sample": SAMPLE},
        {"completion": "<answer>Woman</answer>", **SAMPLE},  # sample fields at the top level
        {"completion": "<think>hmm", **SAMPLE},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return recipe, data, tmp_path


def run(argv):
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


def test_score_prints_table_and_writes_rows(files):
    recipe, data, tmp = files
    output = tmp / "out" / "scores.jsonl"
    code, text = run(["score", "--rewards", str(recipe), "--input", str(data), "--group-size", "2",
                      "--output", str(output)])  # fmt: skip
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["term", "weight", "mean", "std", "none", "min", "max"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:6] if not line.startswith("-")}
    assert table["accuracy"] == ["1.0000", "0.5000", "0.5000", "0", "0.0000", "1.0000"]
    # consistency: [1, 1, None, 0] -> mean 2/3, one None
    assert table["consistency"][:4] == ["0.5000", "0.6667", "0.4714", "1"]
    # totals: 1+1+0.5, 0+1+0.5, 1+0, 0+0+0
    assert table["R_total"] == ["1.2500", "0.9014", "0", "0.0000", "2.5000"]
    assert "groups with zero reward variance: 0/2" in text
    records = [json.loads(x) for x in output.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r["total"] for r in records] == [2.5, 1.5, 1.0, 0.0]
    assert records[2]["terms"]["consistency"] is None and records[0]["weighted"]["consistency"] == 0.5


def test_options_only_argv_and_bare_section(files):
    recipe, data, tmp = files
    section = tmp / "rubric.yaml"
    section.write_text("combiner: step_audio_r1\nterms: [accuracy, has_reasoning]\n")
    code, text = run(["--rewards", str(section), "--input", str(data)])
    assert code == 0 and "combiner: step_audio_r1" in text
    assert any(line.split()[:2] == ["accuracy", "0.8000"] for line in text.splitlines())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"completion": "x"}\nnot json\n', "rows.jsonl:2: invalid JSON"),
        ('{"sample": {}}\n', "rows.jsonl:1: missing 'completion'"),
        ('\n\n{"completion": 3}\n', "rows.jsonl:3: 'completion' must be a string"),
        ("[1, 2]\n", "rows.jsonl:1: expected a JSON object"),
        ('{"completion": "x", "sample": [1]}\n', "rows.jsonl:1: 'sample' must be an object"),
        ('{"completion": "x", "sample": {}, "answer": "y"}\n', "rows.jsonl:1: fields ['answer'] next to 'sample'"),
        ("\n", "no rows"),
        ('{"completion": "x"}\n' * 3, "3 rows is not a multiple of --group-size 2"),
    ],
)
def test_bad_rows_name_the_line(files, capsys, content, message):
    recipe, _, tmp = files
    data = tmp / "rows.jsonl"
    data.write_text(content)
    code, _ = run(["score", "--rewards", str(recipe), "--input", str(data), "--group-size", "2"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_rubric_is_an_input_error(files, capsys):
    _, data, tmp = files
    bad = tmp / "bad.yaml"
    bad.write_text("rewards:\n  terms: [{name: acuracy}]\n")
    assert run(["score", "--rewards", str(bad), "--input", str(data)])[0] == 2
    assert "did you mean 'accuracy'" in capsys.readouterr().err
    bad.write_text("model: {}\n")
    assert run(["score", "--rewards", str(bad), "--input", str(data)])[0] == 2
    assert "no 'rewards:' section" in capsys.readouterr().err


def test_failing_reward_exits_1_naming_it(files, capsys, monkeypatch):
    _, data, tmp = files
    (tmp / "broken_plugin_mod.py").write_text("def boom(completion, sample):\n    raise ValueError('kaput')\n")
    monkeypatch.syspath_prepend(str(tmp))
    recipe = tmp / "r.yaml"
    recipe.write_text("rewards: [{name: 'broken_plugin_mod:boom'}]\n")
    assert run(["score", "--rewards", str(recipe), "--input", str(data)])[0] == 1
    err = capsys.readouterr().err
    assert "reward 'broken_plugin_mod:boom' raised ValueError on row 0 (sample id 'q1'): kaput" in err
    assert "Traceback" in err
    sys.modules.pop("broken_plugin_mod", None)


def test_list_and_python_dash_m(files):
    code, text = run(["list"])
    assert code == 0 and "consistency_rule" in text and "audio_thinker" in text
    recipe, data, _ = files
    result = subprocess.run(
        [sys.executable, "-m", "rewards", "score", "--rewards", str(recipe), "--input", str(data)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "R_total" in result.stdout


def test_score_reports_failed_terms_and_unscored_rows(files):
    recipe, data, tmp = files
    recipe.write_text(
        "rewards:\n"
        "  max_unscored_fraction: 0.5\n"
        "  terms:\n"
        "    - {name: accuracy}\n"
        "    - {name: 'helpers.failing_rewards:by_row', label: flaky, options: {fail_rows: [1]}}\n"
    )
    output = tmp / "scores.jsonl"
    code, text = run(["score", "--rewards", str(recipe), "--input", str(data), "--output", str(output)])
    assert code == 0
    assert "flaky failed on 1 rows (first: stub judge timed out)" in text
    assert "unscored rows (a weighted term failed; no R_total): 1/4" in text
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows[1]["total"] is None and rows[1]["unscored"] == "flaky: stub judge timed out"
    assert rows[1]["failed"] == {"flaky": "stub judge timed out"} and rows[0]["failed"] == {}


def test_a_judge_that_gives_no_verdict_is_one_line_without_a_traceback(files, capsys):
    from helpers.ports import refusing_port

    _, data, tmp = files
    with refusing_port() as port:
        judge = f'{{url: "http://127.0.0.1:{port}/v1", model: judge-8b, retries: 0, timeout_s: 2, on_failure: error}}'
        recipe = tmp / "judged.yaml"
        recipe.write_text(f"rewards:\n  terms:\n    - {{name: consistency, options: {judge}}}\n")
        code = main(["score", "--rewards", str(recipe), "--input", str(data)], out=io.StringIO())
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
    assert "consistency" in err
