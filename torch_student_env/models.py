"""A 1D-CNN over sensor windows, shared by the PPO and DQN examples and the evaluator.

Sensor levels differ by tens of percent between flight phases while wear moves them by a few
percent, so `PhaseNorm` standardises every feature with running statistics *per phase*, kept on
the device and updated from valid rows only. The CNN convolves over time with the features as
channels; padded rows are zeroed after normalisation and excluded from pooling, so they can never
change the output.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import nn

from torch_student_env.spec import NUM_ACTIONS, NUM_FEATURES, PHASE_COLUMN, Phase

_NUM_PHASES = len(Phase)
_CONTINUOUS = [i for i in range(NUM_FEATURES) if i != PHASE_COLUMN]  # 7 sensors + DTAMB
IN_CHANNELS = len(_CONTINUOUS) + _NUM_PHASES  # standardised features + phase one-hot


class PhaseNorm(nn.Module):
    """Running mean/variance of the continuous features per flight phase (buffers, no grads)."""

    def __init__(self) -> None:
        super().__init__()
        n = len(_CONTINUOUS)
        # Start empty: a pseudo-count at mean 0 would bias the variance by mean^2 * count / n.
        self.register_buffer("count", torch.zeros(_NUM_PHASES, 1))
        self.register_buffer("mean", torch.zeros(_NUM_PHASES, n))
        self.register_buffer("var", torch.ones(_NUM_PHASES, n))

    @torch.no_grad()
    def update(self, observation: torch.Tensor, valid: torch.Tensor) -> None:
        """Merge the valid rows of a (..., W, 9) batch into the statistics (Chan et al. 1979)."""
        rows = observation[..., _CONTINUOUS].reshape(-1, len(_CONTINUOUS))
        phase = observation[..., PHASE_COLUMN].reshape(-1).long().clamp(0, _NUM_PHASES - 1)
        weight = valid.reshape(-1, 1).to(rows.dtype)
        one_hot = nn.functional.one_hot(phase, _NUM_PHASES).to(rows.dtype) * weight  # (R, 3)
        n = one_hot.sum(0).unsqueeze(1)  # (3, 1)
        batch_mean = (one_hot.T @ rows) / n.clamp(min=1.0)
        # centre before squaring: E[x^2] - E[x]^2 cancels catastrophically in float32 (x ~ 2e4 rpm)
        batch_var = (one_hot.T @ (rows - batch_mean[phase]).pow(2)) / n.clamp(min=1.0)
        total = self.count + n
        safe_total = total.clamp(min=1.0)  # phases with no rows so far keep mean 0, var 1
        delta = batch_mean - self.mean
        self.mean += delta * n / safe_total
        merged_var = (self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / safe_total) / safe_total
        self.var.copy_(torch.where(total > 0, merged_var, self.var))
        self.count.copy_(total)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """(..., W, 9) rows -> (..., W, IN_CHANNELS) standardised features + phase one-hot."""
        phase = observation[..., PHASE_COLUMN].long().clamp(0, _NUM_PHASES - 1)
        mean, std = self.mean[phase], self.var[phase].clamp(min=1e-8).sqrt()
        standardised = ((observation[..., _CONTINUOUS] - mean) / std).clamp(-10.0, 10.0)
        return torch.cat((standardised, nn.functional.one_hot(phase, _NUM_PHASES).to(observation.dtype)), dim=-1)


def window_inputs(td: TensorDict, max_flights: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(observation (N, W, 9), valid (N, W), age (N,)) from an env TensorDict.

    Accepts the single-row view too: a td whose `observation` is (N, 9) is a window of one row.
    """
    obs, valid, flight = td["observation"], td["valid"], td["flight"]
    if obs.dim() == 2:
        obs, valid, flight = obs.unsqueeze(1), valid.reshape(-1, 1), flight.reshape(-1, 1)
    age = flight[:, -1].to(obs.dtype) / max_flights
    return obs, valid, age


class SensorCNN(nn.Module):
    """Conv1d trunk over time: (N, W, 9) + valid (N, W) + age (N,) -> features (N, hidden)."""

    def __init__(self, hidden: int = 64, channels: int = 32) -> None:
        super().__init__()
        self.norm = PhaseNorm()
        self.conv = nn.Sequential(
            nn.Conv1d(IN_CHANNELS, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        # pooled mean and max over valid rows, + the newest row's features, + age
        self.head = nn.Sequential(nn.Linear(2 * channels + IN_CHANNELS + 1, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, observation: torch.Tensor, valid: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """Any leading batch dims: (*B, W, 9), (*B, W), (*B,) -> (*B, hidden)."""
        batch = observation.shape[:-2]
        observation = observation.reshape(-1, *observation.shape[-2:])
        valid, age = valid.reshape(-1, valid.shape[-1]), age.reshape(-1)
        mask = valid.unsqueeze(-1).to(observation.dtype)  # (N, W, 1)
        x = self.norm(observation) * mask  # padding is exactly zero whatever it held
        h = self.conv(x.transpose(1, 2)).transpose(1, 2) * mask  # (N, W, C)
        count = mask.sum(1).clamp(min=1.0)
        mean = h.sum(1) / count
        maxed = h.masked_fill(mask == 0, float("-inf")).amax(1)
        maxed = torch.where(torch.isfinite(maxed), maxed, 0.0)
        features = self.head(torch.cat((mean, maxed, x[:, -1], age.unsqueeze(-1)), dim=-1))
        return features.reshape(*batch, -1)


def _layer_init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """PPO's policy and value heads on one `SensorCNN` trunk."""

    def __init__(self, hidden: int = 64, max_flights: int = 1000) -> None:
        super().__init__()
        self.max_flights = max_flights
        self.trunk = SensorCNN(hidden)
        self.actor = _layer_init(nn.Linear(hidden, NUM_ACTIONS), gain=0.01)
        self.critic = _layer_init(nn.Linear(hidden, 1), gain=1.0)

    def features(self, td: TensorDict) -> torch.Tensor:
        return self.trunk(*window_inputs(td, self.max_flights))

    def get_value(self, td: TensorDict) -> torch.Tensor:
        return self.critic(self.features(td)).squeeze(-1)

    def get_action_and_value(self, td: TensorDict, action: torch.Tensor | None = None):
        """(action, log_prob, entropy, value); samples an action unless one is given."""
        h = self.features(td)
        dist = torch.distributions.Categorical(logits=self.actor(h))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(h).squeeze(-1)

    def forward(self, td: TensorDict, action: torch.Tensor | None = None):
        """`get_action_and_value`: what a `DistributedDataParallel` wrapper calls."""
        return self.get_action_and_value(td, action)

    @torch.no_grad()
    def act(self, td: TensorDict) -> torch.Tensor:
        """Greedy action (N,): what the evaluator and the plots use."""
        return self.actor(self.features(td)).argmax(-1)


class QNetwork(nn.Module):
    """DQN's action values on the same `SensorCNN` trunk."""

    def __init__(self, hidden: int = 64, max_flights: int = 1000) -> None:
        super().__init__()
        self.max_flights = max_flights
        self.trunk = SensorCNN(hidden)
        self.q = nn.Linear(hidden, NUM_ACTIONS)

    def forward(self, td: TensorDict) -> torch.Tensor:
        return self.q(self.trunk(*window_inputs(td, self.max_flights)))

    @torch.no_grad()
    def act(self, td: TensorDict) -> torch.Tensor:
        """Greedy action (N,)."""
        return self(td).argmax(-1)


__all__ = ["ActorCritic", "IN_CHANNELS", "PhaseNorm", "QNetwork", "SensorCNN", "window_inputs"]
