"""The scorers of an evaluation: the proxy (what PPO optimized: a reward model, rules, functions, weighted) and the
gold scorers (never optimized), each reported by name, plus their weighted totals where there are several."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.models import is_lora_adapter, resolve_model_source
from pipeline.runs import require_complete
from reward_models.base import Episodes
from reward_models.learned import load_learned_reward
from reward_models.registry import RewardSource, RewardSources, build_reward_sources, parse_reward_kwargs, parse_specs

PROXY_TOTAL, GOLD_TOTAL = "proxy", "gold"


def run_reward_model(runs_dir: Path, run: str) -> str:
    """This run's reward model: the RM stage's LoRA adapter when it trained one, else its model folder."""
    stage = require_complete(runs_dir, run, "rm")
    return str(stage / "adapter" if is_lora_adapter(stage / "adapter") else stage / "model")


def reward_model_loader(
    path: str | None, runs_dir: Path, run: str, dtype: str, batch_size: int, device: torch.device
) -> Callable[[str], RewardSource]:
    """Learned scorers: ``rm`` is ``path`` (default: this run's RM stage), anything else a folder or hub id; each
    reads the policies' text with its own tokenizer."""

    def load(spec: str) -> RewardSource:
        if spec == "rm":
            source = resolve_model_source(path, "reward model") if path else run_reward_model(runs_dir, run)
        else:
            source = spec
        return load_learned_reward(source, dtype, batch_size, device)

    return load


@dataclass
class Scorers:
    """The proxy and gold scorers; ``roles`` maps each reported score name to 'proxy' or 'gold'."""

    proxy: RewardSources
    gold: RewardSources | None

    @property
    def proxy_name(self) -> str:
        """The name of the proxy score (the one PPO optimized): its one source, or the weighted total."""
        return self.proxy.names[0] if len(self.proxy.names) == 1 else PROXY_TOTAL

    @property
    def gold_name(self) -> str | None:
        if self.gold is None:
            return None
        return self._gold_names()[0] if len(self.gold.names) == 1 else GOLD_TOTAL

    def _gold_names(self) -> list[str]:
        # A gold scorer that is also a proxy source is reported twice, under a name of its own the second time.
        return [f"{name} (gold)" if name in self.proxy.names else name for name in self.gold.names]

    @property
    def roles(self) -> dict[str, str]:
        roles = dict.fromkeys(self.proxy.names, "proxy")
        if len(self.proxy.names) > 1:
            roles[PROXY_TOTAL] = "proxy"
        if self.gold is not None:
            roles.update(dict.fromkeys(self._gold_names(), "gold"))
            if len(self.gold.names) > 1:
                roles[GOLD_TOTAL] = "gold"
        return roles

    def __call__(self, episodes: Episodes) -> dict[str, list[float]]:
        """Every score of every episode, by name."""
        scores = {}
        with torch.no_grad():
            proxy = self.proxy(episodes)
            scores.update({name: proxy.by_source[name].tolist() for name in self.proxy.names})
            if len(self.proxy.names) > 1:
                scores[PROXY_TOTAL] = proxy.totals.tolist()
            if self.gold is not None:
                gold = self.gold(episodes)
                for name, shown in zip(self.gold.names, self._gold_names(), strict=True):
                    scores[shown] = gold.by_source[name].tolist()
                if len(self.gold.names) > 1:
                    scores[GOLD_TOTAL] = gold.totals.tolist()
        return scores


def build_scorers(
    reward: str,
    weights: str | None,
    kwargs: str | dict | None,
    gold: str | None,
    load_reward_model: Callable[[str], RewardSource],
) -> Scorers:
    """The proxy sources of ``reward`` (weighted) and the gold sources of ``gold``, built as the PPO stage builds
    them."""
    specs = parse_specs(reward) + parse_specs(gold)
    if not parse_specs(reward):
        raise PipelineError("reward is empty: name the proxy scorer (e.g. rm), as the PPO stage's --reward")
    reward_kwargs = parse_reward_kwargs(kwargs, specs)
    proxy = build_reward_sources(reward, weights, load_reward_model, reward_kwargs)
    gold_sources = build_reward_sources(gold, None, load_reward_model, reward_kwargs) if parse_specs(gold) else None
    return Scorers(proxy, gold_sources)
