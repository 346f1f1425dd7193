"""The real ``consistency`` judge reward on stand-ins of the tiny model's completions (a test plugin).

A tiny random model never writes ``<think>...</think><answer>...</answer>``, so the judge term would find no
reasoning and ask nothing. ``consistency_of_stand_ins`` wraps each completion as the reasoning of a well-formed
completion whose answer is the row's reference, and hands those to the registered ``consistency`` reward with the
term's options: every row becomes one request to the judge server, through the harness's own client, cache and
failure handling.
"""

from rewards import get_reward


def consistency_of_stand_ins(completions, samples, context, **options):
    texts = [
        f"<think>{completion.strip() or 'nothing'}</think><answer>{sample['answer']}</answer>"
        for completion, sample in zip(completions, samples, strict=True)
    ]
    return get_reward("consistency").fn(texts, samples, context, **options)


consistency_of_stand_ins.batched = True
