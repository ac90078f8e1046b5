"""The edit policy's side of the environment: what it reads for a query, and its greedy edits at test time.

The policy reads ``policy_template`` filled with the initial prompt written out and the query, and emits one action
token per edit (the engine restricts it to the action tokens and EOS). At test time the actions are decoded
greedily: at each step the most likely allowed token, until EOS or ``max_edits`` edits. Both the stage and the
command that applies a trained policy decode through the engine's own sampling functions.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from pipeline.errors import PipelineError
from stages.ppo.core import truncate_after_eos
from stages.ppo.sampling import generate, sampling_config, stop_token_ids, token_rules, tokenize_prompts
from stages.prompt_edit.reward import ActionTokens

SLOTS = {"prompt", "input"}


def check_policy_template(template: str) -> None:
    """The policy template must have the ``{prompt}`` and ``{input}`` slots and no other."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise PipelineError(f"policy_template {template!r} is not a valid format string ({error})") from error
    if fields != SLOTS:
        raise PipelineError(
            f"policy_template {template!r} must have exactly the slots {{prompt}} (the initial prompt) and {{input}} "
            f"(the query); it has {sorted(fields)}"
        )


def policy_inputs(template: str, prompt_text: str, queries: Sequence[str]) -> list[str]:
    """What the policy reads for each query."""
    return [template.format(prompt=prompt_text, input=query) for query in queries]


@torch.no_grad()
def greedy_actions(
    policy,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[str],
    tokens: ActionTokens,
    max_edits: int,
    max_prompt_length: int | None,
    batch_size: int = 64,
) -> list[list[int]]:
    """The policy's greedy actions for each input: the most likely action token at each step, until EOS."""
    device = next(policy.parameters()).device
    stop_ids = stop_token_ids(tokenizer, None, None)
    rules = token_rules(tokens.token_ids, stop_ids, False, policy.get_output_embeddings().weight.shape[0])
    config = sampling_config(max_edits, 1.0, stop_ids, tokenizer.pad_token_id, greedy=True)
    actions: list[list[int]] = []
    for start in range(0, len(inputs), batch_size):
        ids, mask = tokenize_prompts(tokenizer, list(inputs[start : start + batch_size]), max_prompt_length, device)
        raw = generate(policy, ids, mask, config, rules, batch_size)
        responses, response_mask, _, _ = truncate_after_eos(raw, stop_ids, tokenizer.pad_token_id)
        actions += tokens.episode_actions(responses, response_mask)
    return actions
