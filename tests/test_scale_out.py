"""Several training processes: ``accelerate launch`` with 2 CPU processes (gloo) against the 1-process run.

The launch is the one docs/scale-out.md gives for a GPU node (configs/accelerate/ddp.yaml), with ``--num_processes 2``:
with no GPU visible every process trains on the CPU over gloo.
"""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.accelerate_launch import accelerate_launch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
G = 4
PROMPTS_PER_STEP = 3  # 12 rows per step: 6 per process, so one prompt's group is split over the two processes

COMMON = [
    "data.synthetic.num_questions=12",
    "data.synthetic.heldout_questions=4",
    "eval.sets=[{name: tones, source: synthetic}]",  # scored on process 0 while the other waits
    f"rollout.num_generations={G}",
    "rollout.max_completion_length=10",
    "trainer.max_steps=2",
    "trainer.learning_rate=1e-3",
    "trainer.save_steps=1",
    "coldstart.steps=3",
    "coldstart.batch_size=4",
    "rewards.terms=[{name: format, weight: 1.0}, {name: 'group_probe:longest_in_group', weight: 0.5}]",
]


def launch(
    run_dir: Path,
    processes: int,
    probe_log: Path,
    *extra: str,
    kill_after_checkpoint: int | None = None,
    fail_rename_at: int | None = None,
    expect_failure: bool = False,
) -> subprocess.CompletedProcess:
    """``grpo-audio train`` on ``processes`` processes; with ``kill_after_checkpoint`` every process is SIGKILLed
    right after that checkpoint is complete (tests/helpers/kill_run.py); with ``fail_rename_at`` process 0's rename
    of that checkpoint into place fails with a full disk (tests/helpers/disk_full_run.py); ``expect_failure``: the
    run is expected to stop with an error."""
    per_process = PROMPTS_PER_STEP * G // processes
    overrides = [f"run.output_dir={run_dir}", f"trainer.per_device_train_batch_size={per_process}", *COMMON, *extra]
    if kill_after_checkpoint is not None:
        train = [str(HELPERS / "kill_run.py"), "after_save", str(kill_after_checkpoint), *overrides]
    elif fail_rename_at is not None:
        train = [str(HELPERS / "disk_full_run.py"), str(fail_rename_at), *overrides]
    else:
        train = ["-m", "grpo_audio", "train", *[arg for o in overrides for arg in ("--set", o)]]
    if processes == 1:
        command = [sys.executable, *train]
    else:
        command = [*accelerate_launch(processes), *train]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
        "GROUP_PROBE_LOG": str(probe_log),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if kill_after_checkpoint is None and fail_rename_at is None and not expect_failure:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    else:
        assert done.returncode != 0, "the run was expected to be killed or to fail"
    return done


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_out")
    two = launch(root / "two", 2, root / "two_probe.jsonl")
    one = launch(root / "one", 1, root / "one_probe.jsonl")
    return root, two, one


@pytest.mark.slow
def test_both_processes_train_and_group_rewards_see_whole_groups(runs):
    root, two, _ = runs
    run_dir = root / "two"
    rollouts = jsonl(run_dir / "rollouts.jsonl")
    per_step_rank = collections.Counter((r["step"], r["rank"]) for r in rollouts)
    assert per_step_rank == {(s, r): PROMPTS_PER_STEP * G // 2 for s in (1, 2) for r in (0, 1)}
    # one prompt's G completions were generated on both processes ...
    for step in (1, 2):
        ranks_of = collections.defaultdict(set)
        for r in rollouts:
            if r["step"] == step:
                ranks_of[r["prompt_id"]].add(r["rank"])
        assert sorted(len(v) for v in ranks_of.values()) == [1, 1, 2]
    # ... and the group-level reward, called once per step on process 0, saw each group whole
    calls = jsonl(root / "two_probe.jsonl")
    assert len(calls) == 2 and {c["rank"] for c in calls} == {0} and len({c["pid"] for c in calls}) == 1
    for call in calls:
        ids = call["ids"]
        assert len(ids) == PROMPTS_PER_STEP * G
        assert all(len(set(ids[i : i + G])) == 1 for i in range(0, len(ids), G))
    # the rewards each completion was logged with come from that whole-group scoring
    assert all(set(r["rewards"]) == {"format", "group_probe:longest_in_group"} for r in rollouts)
    for step in (1, 2):
        groups = collections.defaultdict(list)
        for r in rollouts:
            if r["step"] == step:
                groups[r["prompt_id"]].append(r["rewards"]["group_probe:longest_in_group"])
        assert all(sum(v) >= 1.0 for v in groups.values())  # every group has its longest completion


@pytest.mark.slow
def test_process_zero_alone_writes_the_run_directory(runs):
    root, two, _ = runs
    run_dir = root / "two"
    assert len((run_dir / "command.txt").read_text().splitlines()) == 1
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["eval"]["sets"]["tones"]["items"] == 4
    assert [status["eval"][e]["step"] for e in ("first", "last")] == [0, 2]
    steps = [m["step"] for m in jsonl(run_dir / "metrics.jsonl") if "reward" in m]
    assert steps == [1, 2]
    assert len(jsonl(run_dir / "coldstart.jsonl")) == 3
    checkpoint = run_dir / "trainer" / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert not (run_dir / "trainer" / ".staging").exists()
    assert two.stdout.count("done; final model") == 1


@pytest.mark.slow
def test_every_process_leaves_its_process_group_before_it_exits(runs):
    """A finished multi-process run destroys its process group on every process (``leave_process_group``): left to
    interpreter exit, NCCL warns from every rank and gloo can abort in finalization. Recorded by each process's
    atexit hook (tests/helpers/group_probe.py), which runs after the command returned."""
    root, _, _ = runs
    exits = jsonl(root / "two_probe.jsonl.exit")
    assert sorted((e["rank"], e["group_alive"]) for e in exits) == [(0, False), (1, False)]


@pytest.mark.slow
def test_two_processes_see_the_same_data_as_one(runs):
    root, _, _ = runs
    two, one = root / "two", root / "one"
    # the same starting point: the cold start ran once, on process 0, and was handed to process 1
    first = load_file(two / "initial_model" / "model.safetensors")
    second = load_file(one / "initial_model" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # the same global batch each step: the same prompts, no duplicates across the processes
    for step in (1, 2):
        ids_two = collections.Counter(r["prompt_id"] for r in jsonl(two / "rollouts.jsonl") if r["step"] == step)
        ids_one = collections.Counter(r["prompt_id"] for r in jsonl(one / "rollouts.jsonl") if r["step"] == step)
        assert ids_two == ids_one and set(ids_two.values()) == {G}

    # the same completions: each row samples from its own stream, keyed by its place in the global batch
    def completions(run):
        rows = jsonl(run / "rollouts.jsonl")
        return sorted((r["step"], r["prompt_id"], r["completion"], r["R_total"]) for r in rows)

    assert completions(two) == completions(one)
    # so the same rewards, advantages and update: DDP's mean over 2 processes equals the 1-process gradient
    steps_two = [m for m in jsonl(two / "metrics.jsonl") if "reward" in m]
    steps_one = [m for m in jsonl(one / "metrics.jsonl") if "reward" in m]
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["reward"] == b["reward"] and a["reward_std"] == b["reward_std"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    a, b = final_weights(two), final_weights(one)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def final_weights(run_dir: Path) -> dict:
    return load_file(next((run_dir / "final_model").glob("*.safetensors")))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_audio", "qwen2_5_omni_thinker"])
def test_a_qwen_family_trains_on_two_processes_as_on_one(tmp_path, family):
    """A Qwen family under accelerate with 2 processes: the cold start handed from process 0, the same completions
    and rewards as one process, and the same final weights (DDP's mean gradient). Full fine-tuning with a KL term:
    each process keeps its frozen copy of the starting point as the reference, and the KL is the 1-process run's."""
    two, one = tmp_path / "two", tmp_path / "one"
    launch(two, 2, tmp_path / "two_probe.jsonl", f"model.family={family}", "trainer.beta=0.04")
    launch(one, 1, tmp_path / "one_probe.jsonl", f"model.family={family}", "trainer.beta=0.04")
    assert json.loads((two / "run.json").read_text())["processes"] == 2

    def completions(run):
        return sorted(
            (r["step"], r["prompt_id"], r["completion"], r["R_total"]) for r in jsonl(run / "rollouts.jsonl")
        )

    assert completions(two) == completions(one)
    assert "<|AUDIO|>" in (two / "prompt.txt").read_text()
    a, b = final_weights(two), final_weights(one)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    kls = [[m["kl"] for m in jsonl(run / "metrics.jsonl") if "reward" in m] for run in (two, one)]
    assert kls[0] == pytest.approx(kls[1], abs=1e-6) and kls[0][-1] > 0  # the reference is in use, alike


@pytest.mark.slow
def test_two_process_run_killed_after_a_checkpoint_resumes_to_the_same_result(runs, tmp_path):
    root, _, _ = runs
    run_dir = tmp_path / "killed"
    launch(run_dir, 2, tmp_path / "probe.jsonl", kill_after_checkpoint=1)
    assert (run_dir / "trainer" / "checkpoint-1").is_dir() and not (run_dir / "final_model").exists()
    resumed = launch(run_dir, 2, tmp_path / "probe.jsonl")
    assert "resuming from" in resumed.stdout
    uninterrupted = root / "two"
    train_steps = [m for m in jsonl(run_dir / "metrics.jsonl") if "reward" in m]
    reference = [m for m in jsonl(uninterrupted / "metrics.jsonl") if "reward" in m]
    timing = ("time/", "step_time")
    strip = [{k: v for k, v in m.items() if not k.startswith(timing)} for m in train_steps]
    assert strip == [{k: v for k, v in m.items() if not k.startswith(timing)} for m in reference]
    # Weights: equal to float rounding. The 1-process resume is bitwise (tests/test_resume.py); after a
    # 2-process restart the last float bit can differ (max |diff| measured 1.5e-7; the two processes stay
    # bitwise in sync with each other), while every logged metric above is identical.
    a, b = final_weights(run_dir), final_weights(uninterrupted)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


@pytest.mark.slow
def test_resuming_with_another_process_count_is_refused(tmp_path):
    run_dir, batch = tmp_path / "killed", "trainer.per_device_train_batch_size=4"  # valid with 1 or 2 processes
    launch(run_dir, 2, tmp_path / "probe.jsonl", batch, kill_after_checkpoint=1)
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "GROUP_PROBE_LOG": str(tmp_path / "probe.jsonl")}
    overrides = [f"run.output_dir={run_dir}", *COMMON, batch]
    command = [sys.executable, "-m", "grpo_audio", "train", *[a for o in overrides for a in ("--set", o)]]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "trained with 2 process(es) and is resumed with 1" in done.stderr


@pytest.mark.slow
def test_fsdp2_sharded_model_hears_and_generates_like_the_unsharded_one(tmp_path):
    """FSDP2 shards the embeddings, encoder and adapter with the root; the audio path calls them outside forward."""
    out = tmp_path / "result.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HELPERS / "fsdp2_audio_path.py"),
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert "mixed torch.Tensor and DTensor" in result["without_context"]  # what root_parameters_unsharded prevents
    assert result["audio_equal"] and result["tokens_equal"]
    assert result["embedding_param_after"] == "DTensor"  # sharded again afterwards: no memory kept gathered
