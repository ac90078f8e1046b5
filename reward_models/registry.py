"""Build a reward function from a spec string: ``rm``, ``vader``, a reward-model folder or hub id, or
``module:function`` (any callable with TRL's reward-function signature); comma-separated specs are summed
with weights."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

from pipeline.errors import PipelineError
from reward_models.base import RewardFunction, call_reward


class WeightedSum:
    """``sum_i w_i * reward_i(prompts, completions, **columns)``."""

    __name__ = "weighted_sum"

    def __init__(self, functions: Sequence[RewardFunction], weights: Sequence[float]) -> None:
        if len(functions) != len(weights):
            raise PipelineError(
                f"{len(functions)} reward sources but {len(weights)} reward_weights; give one weight each"
            )
        self.functions = list(functions)
        self.weights = [float(w) for w in weights]

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        total = torch.zeros(len(completions))
        for function, weight in zip(self.functions, self.weights, strict=True):
            total += weight * call_reward(function, prompts, completions, **columns)
        return total


def import_callable(spec: str) -> Callable:
    """Import ``package.module:function``; errors say what was wrong with the spec."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PipelineError(f"reward '{spec}': cannot import module '{module_name}' ({error})") from error
    function = getattr(module, attribute, None)
    if not callable(function):
        raise PipelineError(f"reward '{spec}': module '{module_name}' has no callable '{attribute}'")
    return function


def build_reward(specs: str, weights: str | None, load_reward_model: Callable[[str], RewardFunction]) -> RewardFunction:
    """The reward function named by comma-separated ``specs`` (weighted by ``weights`` when several).

    ``load_reward_model(spec)`` turns ``rm`` or a model folder / hub id into a learned reward source; it is
    passed in because only the caller knows the run folder and the device.
    """
    names = [name.strip() for name in specs.split(",") if name.strip()]
    if not names:
        raise PipelineError("reward is empty: name at least one source (rm, vader, a model path, or module:function)")
    functions = [_one(name, load_reward_model) for name in names]
    if len(functions) == 1 and weights is None:
        return functions[0]
    try:
        parsed = [float(w) for w in weights.split(",")] if weights else [1.0] * len(functions)
    except ValueError as error:
        raise PipelineError(
            f"reward_weights '{weights}' must be comma-separated numbers, one per reward source"
        ) from error
    return WeightedSum(functions, parsed)


def _one(name: str, load_reward_model: Callable[[str], RewardFunction]) -> RewardFunction:
    if name == "vader":
        from reward_models.vader import vader_reward

        return vader_reward
    if ":" in name and not name.startswith((".", "/")):
        return import_callable(name)
    return load_reward_model(name)
