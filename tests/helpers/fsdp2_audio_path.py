"""Run under ``torchrun --nproc_per_node 2``: the audio path of an FSDP2-sharded tiny model (test helper).

Shards the tiny Covo-Audio model as accelerate's FSDP2 does (each Qwen2 decoder layer, then the root), then runs
the featurizer (encoder + adapter) and a greedy HF-engine rollout inside ``root_parameters_unsharded``, and writes
to argv[1] (rank 0) whether the results equal the unsharded model's and what happens without the context.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.data.dataset import build_dataset
from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.prompting import load_template
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.data.vocabulary import vocabulary_texts
from grpo_audio.distributed import root_parameters_unsharded
from grpo_audio.model.build import build_tokenizer_and_model
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS, IM_END
from grpo_audio.recipe import load_recipe
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings

dist.init_process_group("gloo")
recipe = load_recipe(None, [])
template = load_template(recipe.prompt.template)
rows = load_manifest(write_synthetic_set(Path(tempfile.mkdtemp()), 2, ["pitch"], seed=0))
tokenizer, model = build_tokenizer_and_model(recipe.model, recipe.run.seed, vocabulary_texts(rows, template))
dataset = build_dataset(rows, tokenizer, template)
prompt_ids = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in dataset]
paths = [r["audio"] for r in dataset]
engine = HFRolloutEngine(
    SamplingSettings(max_new_tokens=6, do_sample=False),
    stop_token_ids=[tokenizer.convert_tokens_to_ids(IM_END)],
    pad_token_id=tokenizer.pad_token_id,
    audio_marker_ids=tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS)),
)


def audio_and_rollout():
    audio = AudioFeaturizer(reuse_embeddings=True).rows(paths, model, torch.device("cpu"))
    return audio.audio_embeds.clone(), engine.generate(model, prompt_ids, audio).completion_ids


expected_audio, expected_tokens = audio_and_rollout()
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for module in model.modules():
    if type(module).__name__ == "Qwen2DecoderLayer":
        fully_shard(module, mesh=mesh)
fully_shard(model, mesh=mesh)
try:
    audio_and_rollout()
    without = "ran"
except RuntimeError as exc:
    without = f"RuntimeError: {exc}"[:200]
with root_parameters_unsharded(model):
    audio, tokens = audio_and_rollout()
sharded_again = type(model.get_input_embeddings().weight).__name__
if dist.get_rank() == 0:
    result = {
        "world": dist.get_world_size(),
        "without_context": without,
        "audio_equal": torch.equal(audio, expected_audio),
        "tokens_equal": tokens == expected_tokens,
        "tokens": tokens,
        "embedding_param_after": sharded_again,
    }
    with open(sys.argv[1], "w", encoding="utf-8") as fh:
        json.dump(result, fh)
# Both ranks leave together, then skip the interpreter's finalization: there, after destroy_process_group had
# returned on both ranks, a C++ object left by gloo/FSDP2 still owned a joinable thread and aborted the process
# ("terminate called without an active exception", no Python frame under faulthandler) in 2 of 81 runs on 2 CPUs,
# after the result had been written. Nothing is left to flush but the standard streams.
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
