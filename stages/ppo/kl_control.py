"""KL-penalty coefficient controllers: fixed, or adaptive towards a target KL (Ziegler et al. 2019)."""

from __future__ import annotations

from typing import Protocol

KL_CONTROLLER_KINDS = ("fixed", "adaptive")
ADAPTIVE_ERROR_CLIP = 0.2


class KLController(Protocol):
    """The KL coefficient ``value`` (beta), updated once per rollout batch."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class _StatefulController:
    """Checkpointing shared by the controllers: the state is the current coefficient, tagged with the kind."""

    kind: str
    value: float

    def state_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(
                f"checkpoint holds a {state.get('kind')!r} KL controller but this run uses {self.kind!r}; "
                "resume with the same kl controller setting"
            )
        self.value = float(state["value"])


class FixedKLController(_StatefulController):
    """A constant KL coefficient."""

    kind = "fixed"

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient never changes."""


class AdaptiveKLController(_StatefulController):
    """Proportional controller moving the coefficient so the observed KL approaches ``target``.

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``; ``value *= 1 + e * n_steps / horizon``.
    """

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"initial KL coefficient must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"adaptive KL control needs a positive target KL, got {target}")
        if horizon <= 0:
            raise ValueError(f"adaptive KL control needs a positive horizon, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Scale the coefficient after ``n_steps`` episodes whose mean KL was ``current_kl``."""
        error = min(max(current_kl / self.target - 1.0, -ADAPTIVE_ERROR_CLIP), ADAPTIVE_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(kind: str, init_kl_coef: float, target: float | None, horizon: int) -> KLController:
    """Build a ``"fixed"`` or ``"adaptive"`` controller; adaptive needs a positive ``target``."""
    if kind == "fixed":
        return FixedKLController(init_kl_coef)
    if kind == "adaptive":
        if target is None:
            raise ValueError("adaptive KL control needs a positive target KL (kl target), got none")
        return AdaptiveKLController(init_kl_coef, target, horizon)
    raise ValueError(f"unknown KL controller {kind!r}; expected one of {', '.join(KL_CONTROLLER_KINDS)}")
