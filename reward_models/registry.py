"""Reward sources from config: comma-separated specs, one weight each, keyword arguments per spec.

A spec is ``vader``, ``rm`` (the run's reward model), a reward-model folder or hub id, or ``module:name`` naming a
function with TRL's reward-function signature or a class whose instances are reward sources (``__call__`` for text,
``score_episodes`` for token ids). ``reward_kwargs`` (JSON) maps a spec to the keyword arguments its class is built
with, or that are passed to its function on every call. The result is the list of sources and their weights, the
form TRL's GRPO and RLOO trainers take (``reward_funcs`` and ``reward_weights``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pipeline.errors import PipelineError, UserCodeError
from reward_models.base import EpisodeReward, Episodes, RewardFunction, call_reward, reward_name

RewardSource = RewardFunction | EpisodeReward


@dataclass
class Rewards:
    """What the reward sources said about one batch of episodes, weighted and summed."""

    scores: torch.Tensor  # [B] the weighted sum of the per-episode sources
    token_rewards: torch.Tensor | None  # [B, T] the weighted sum of the per-token sources, if any
    by_source: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] each source's own total per episode

    @property
    def totals(self) -> torch.Tensor:
        """[B] each episode's whole reward: its score plus its per-token rewards."""
        if self.token_rewards is None:
            return self.scores
        return self.scores + self.token_rewards.sum(1)


@dataclass
class RewardSources:
    """Reward sources with their weights and report names."""

    sources: list[RewardSource]
    weights: list[float]
    names: list[str]

    def __call__(self, episodes: Episodes) -> Rewards:
        """Score ``episodes`` with every source and sum them by weight, per-episode and per-token separately."""
        scores = torch.zeros(len(episodes), device=episodes.responses.device)
        token_rewards, by_source = None, {}
        for source, weight, name in zip(self.sources, self.weights, self.names, strict=True):
            rewards = call_reward(source, episodes)
            if rewards.dim() == 2:
                token_rewards = weight * rewards if token_rewards is None else token_rewards + weight * rewards
                by_source[name] = rewards.sum(1)
            else:
                scores = scores + weight * rewards
                by_source[name] = rewards
        return Rewards(scores, token_rewards, by_source)


def parse_specs(specs: str | None) -> list[str]:
    """The comma-separated reward specs, stripped, empty entries dropped."""
    return [spec.strip() for spec in (specs or "").split(",") if spec.strip()]


def parse_reward_kwargs(value: str | dict | None, specs: list[str]) -> dict[str, dict]:
    """``reward_kwargs`` as a mapping from spec to keyword arguments (JSON text or an already parsed mapping), each
    key one of ``specs``."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise PipelineError(
                f"reward_kwargs is not valid JSON ({error}); write it like "
                '\'{"my_module:MyReward": {"target": 20}}\''
            ) from error
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise PipelineError(
            'reward_kwargs must map each reward spec to an object of keyword arguments, e.g. {"mod:Cls": {"k": 1}}'
        )
    parsed = {key.strip(): kwargs for key, kwargs in value.items()}
    unknown = sorted(set(parsed) - set(specs))
    if unknown:
        raise PipelineError(f"reward_kwargs names {unknown}, which are not among the reward sources {specs}")
    return parsed


def build_reward_sources(
    specs: str,
    weights: str | None,
    load_reward_model: Callable[[str], RewardSource],
    reward_kwargs: dict[str, dict] | None = None,
) -> RewardSources:
    """The sources named by comma-separated ``specs`` with their weights (all 1 by default), a ``module:name`` spec
    built or called with its entry of ``reward_kwargs`` (see ``parse_reward_kwargs``).

    ``load_reward_model(spec)`` turns ``rm`` or a model folder / hub id into a reward source; the caller passes it
    because only the caller knows the run folder, the device and where the policy's model lives.
    """
    names = parse_specs(specs)
    if not names:
        raise PipelineError("reward is empty: name at least one source (rm, vader, a model path, or module:name)")
    kwargs = reward_kwargs or {}
    sources = [_one(name, load_reward_model, kwargs.get(name)) for name in names]
    try:
        parsed = [float(w) for w in weights.split(",")] if weights else [1.0] * len(sources)
    except ValueError as error:
        raise PipelineError(
            f"reward_weights '{weights}' must be comma-separated numbers, one per reward source"
        ) from error
    if len(parsed) != len(sources):
        raise PipelineError(f"{len(sources)} reward sources but {len(parsed)} reward_weights; give one weight each")
    return RewardSources(sources, parsed, _report_names(names, sources))


def _report_names(specs: list[str], sources: list[RewardSource]) -> list[str]:
    """Each source's report name, made unique by its spec where two share one."""
    names = [reward_name(source) for source in sources]
    return [name if names.count(name) == 1 else spec for name, spec in zip(names, specs, strict=True)]


def import_object(spec: str) -> object:
    """Import ``package.module:name``; errors say what was wrong with the spec."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PipelineError(f"reward '{spec}': cannot import module '{module_name}' ({error})") from error
    found = getattr(module, attribute, None)
    if not callable(found):
        raise PipelineError(f"reward '{spec}': module '{module_name}' has no callable '{attribute}'")
    return found


def _one(spec: str, load_reward_model: Callable[[str], RewardSource], kwargs: dict | None) -> RewardSource:
    if spec == "vader":
        from reward_models.vader import vader_reward

        found: object = vader_reward
    elif ":" in spec and not spec.startswith((".", "/")):
        found = import_object(spec)
    else:
        if kwargs:
            raise PipelineError(f"reward_kwargs for '{spec}': a reward model takes no keyword arguments")
        return load_reward_model(spec)
    if inspect.isclass(found):
        try:
            return found(**(kwargs or {}))
        except PipelineError:
            raise
        except Exception as error:
            raise UserCodeError(f"reward '{spec}': building it failed: {type(error).__name__}: {error}") from error
    if kwargs:
        source = functools.partial(found, **kwargs)
        source.__name__ = reward_name(found)
        return source
    return found
