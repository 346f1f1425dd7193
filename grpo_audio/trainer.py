"""``AudioGRPOTrainer``: TRL's GRPOTrainer with audio in generation and in every log-prob pass.

Stock TRL has no audio path: a model given placeholder tokens but no audio trains without error while never
hearing anything. This subclass overrides four extension points of TRL 1.16 (pinned exactly; the signatures are
checked by a contract test):

* ``_generate_and_score_completions``: computes the batch's ``AudioRows`` once (from the rows' ``audio`` paths),
  keeps them for the calls below, and returns them in the output dict so TRL shuffles and splits them with the
  other per-row tensors;
* ``_generate_single_turn``: rollouts through the recipe's engine from audio-merged prompt embeddings;
* ``_get_per_token_logps_and_entropies``: passes each chunk's audio to the (fused-head) forward; serves the
  old-policy, reference and policy passes alike;
* ``_compute_loss``: makes the micro-batch's audio (from its inputs) current for the policy pass.

Audio is handed to the log-prob method through ``self._current_audio`` because TRL's callers do not forward
unknown keyword arguments; the method checks that the audio rows match the token rows and fails otherwise.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from grpo_audio.audio_rows import AUDIO_KEYS, AudioFeaturizer, AudioRows
from grpo_audio.rollout.base import RolloutEngine, RolloutResult


class AudioGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, rollout_engine: RolloutEngine, featurizer: AudioFeaturizer, **kwargs) -> None:
        self.rollout_engine = rollout_engine
        self.featurizer = featurizer
        self._current_audio: AudioRows | None = None
        self.last_rollout: RolloutResult | None = None
        super().__init__(*args, **kwargs)

    def _generate_and_score_completions(self, inputs):
        missing = [i for i, row in enumerate(inputs) if not row.get("audio")]
        if missing:
            raise ValueError(f"batch rows {missing} have no 'audio' path; every training row needs a clip")
        model = self.accelerator.unwrap_model(self.model)
        self._current_audio = self.featurizer.rows([row["audio"] for row in inputs], model, self.accelerator.device)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            audio, self._current_audio = self._current_audio, None
        output.update(audio.as_dict())
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None:
            raise ValueError("this trainer takes audio, not images")
        audio = self._require_audio(len(prompt_ids))
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
        ):
            # A PEFT wrapper forwards prompt_embeddings/config to the base model and keeps its adapters active
            result = self.rollout_engine.generate(unwrapped, [list(p) for p in prompt_ids], audio)
        self.last_rollout = result
        return result.completion_ids, result.logprobs

    def _compute_loss(self, model, inputs):
        self._current_audio = AudioRows.from_inputs(inputs)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._current_audio = None

    def _require_audio(self, rows: int) -> AudioRows:
        audio = self._current_audio
        if audio is None or len(audio) != rows:
            got = "none" if audio is None else f"{len(audio)} rows"
            raise RuntimeError(f"audio for {rows} token rows expected, {got} available: the audio path is broken")
        return audio

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_kwargs,
    ):
        """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, with each row's audio.

        Same contract as TRL's method; image arguments must be absent. Chunks of ``batch_size`` rows bound the
        activation memory; each chunk carries its own rows of audio.
        """
        images = {k: v for k, v in multimodal_kwargs.items() if v is not None and k not in AUDIO_KEYS}
        if images:
            raise ValueError(f"unexpected image inputs {sorted(images)} for an audio model")
        audio = self._require_audio(input_ids.size(0))
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies, all_aux = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            # Score only completion tokens: TRL's fused head projects just the positions with a label
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            model_inputs = {"input_ids": ids, "attention_mask": mask, **audio.rows(start, end)}
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            with self.accelerator.autocast():
                outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
            all_logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(outputs.entropy[:, -logits_to_keep:])
            if compute_aux_loss:
                all_aux.append(outputs.aux_loss)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        aux = torch.stack(all_aux).mean() if compute_aux_loss else None
        return logps, entropies, aux
