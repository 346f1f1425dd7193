"""A synthetic audio question set whose answers can only be known by listening, written as real WAV files.

Tasks (each question's text is identical across answers, so the text alone gives chance accuracy):
* ``pitch``: one 0.8 s tone at 300 Hz ("low") or 1500 Hz ("high");
* ``count``: one to three 0.12 s beeps at 800 Hz, 0.2 s apart ("one" / "two" / "three");
* ``longer``: a 500 Hz tone then a 1000 Hz tone, one 0.25 s and the other 0.8 s ("first" / "second").
Amplitudes vary in [0.3, 0.8] and low-level noise (std 0.005) is added so no two clips are identical. Files are
16 kHz 16-bit PCM mono (the loader resamples them to the model's 24 kHz like any user file).

Everything derives from ``seed`` through one ``numpy.random.Generator``: the same seed writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from grpo_audio.files import write_jsonl

SAMPLE_RATE = 16000
QUESTIONS = {
    "pitch": ("Is the tone in this clip high or low in pitch?", ["high", "low"]),
    "count": ("How many beeps are in this clip?", ["one", "two", "three"]),
    "longer": ("Two tones play one after the other. Which tone lasts longer?", ["first", "second"]),
}


def _tone(freq: float, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks at the edges
    return (amplitude * ramp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def _clip(task: str, answer: str, rng: np.random.Generator) -> np.ndarray:
    amp = float(rng.uniform(0.3, 0.8))
    if task == "pitch":
        body = _tone(1500.0 if answer == "high" else 300.0, 0.8, amp)
    elif task == "count":
        n = ["one", "two", "three"].index(answer) + 1
        parts = []
        for _ in range(n):
            parts += [_tone(800.0, 0.12, amp), _silence(0.2)]
        body = np.concatenate(parts)
    elif task == "longer":
        first, second = (0.8, 0.25) if answer == "first" else (0.25, 0.8)
        body = np.concatenate([_tone(500.0, first, amp), _silence(0.15), _tone(1000.0, second, amp)])
    else:
        raise ValueError(f"unknown synthetic task {task!r}")
    wave = np.concatenate([_silence(0.1), body, _silence(0.1)])
    return (wave + rng.normal(0.0, 0.005, wave.shape)).astype(np.float32)


def write_synthetic_set(directory: Path, num_questions: int, tasks: list[str], seed: int, id_prefix: str = "") -> Path:
    """Write ``num_questions`` WAV files and a ``manifest.jsonl`` into ``directory``; return the manifest path.

    Row ids are ``<id_prefix><task>-<i>``: the held-out split passes ``heldout-`` so its ids never equal a training
    row's.

    Questions cycle through ``tasks``; answers are balanced within each task (cycling through its choices), and
    the choice order is shuffled per question so the position of the answer carries no signal.
    """
    if not tasks:
        raise ValueError("synthetic data needs at least one task")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_task_count = {task: 0 for task in tasks}
    rows = []
    for i in range(num_questions):
        task = tasks[i % len(tasks)]
        question, choices = QUESTIONS[task]
        answer = choices[per_task_count[task] % len(choices)]
        per_task_count[task] += 1
        shown = list(rng.permutation(choices))
        name = f"{task}_{i:04d}.wav"
        sf.write(directory / name, _clip(task, answer, rng), SAMPLE_RATE, subtype="PCM_16")
        rows.append(
            {
                "id": f"{id_prefix}{task}-{i:04d}",
                "audio": name,
                "question": question,
                "choices": shown,
                "answer": answer,
                "task": task,
            }
        )
    manifest = directory / "manifest.jsonl"
    write_jsonl(manifest, rows)
    return manifest
