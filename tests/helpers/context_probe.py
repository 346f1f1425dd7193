"""A reward plugin that reports what the reward context told it: 1.0 for a completion whose finish reason is
"length" (cut at the run's limit), 0.0 for "stop"; it fails loudly when the context has no finish reasons."""


def cut_at_limit(completions, samples, context):
    if context.finish_reasons is None or context.max_length is None:
        raise ValueError("the reward context carries no finish reasons or no length limit")
    return [1.0 if reason == "length" else 0.0 for reason in context.finish_reasons]


cut_at_limit.batched = True
