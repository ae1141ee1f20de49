"""A 1D-CNN over sensor windows, shared by the PPO and DQN examples and the evaluator.

`FeatureNorm` standardises the 7 sensors and DTAMB with running statistics kept on the device and
updated from valid rows only (the challenge's server flies cruise only, so the constant
`phase_type` column is left out). The CNN convolves over time with the features as channels;
padded rows are zeroed after normalisation and excluded from pooling, so they can never change
the output. The head also reads the engine's age and, with `player_keys`, the player-side
counters `since_repair` and `repairs` (`spec.PLAYER_KEYS`), which any client can track.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict
from torch import nn

from torch_student_env.belief import BeliefPolicy
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import CLIENT_STEPS_PER_EPISODE, NUM_ACTIONS, NUM_FEATURES, PHASE_COLUMN

_CONTINUOUS = [i for i in range(NUM_FEATURES) if i != PHASE_COLUMN]  # 7 sensors + DTAMB
IN_CHANNELS = len(_CONTINUOUS)
REPAIRS_SCALE = 10.0  # repairs are read as repairs / 10: an episode rarely has more
EXTRA_INPUTS_KEY = "extra_inputs"  # where a rollout caches `ActorCritic.extra_inputs`


class FeatureNorm(nn.Module):
    """Running mean/variance of the continuous features (buffers, no grads)."""

    def __init__(self) -> None:
        super().__init__()
        n = len(_CONTINUOUS)
        # Start empty: a pseudo-count at mean 0 would bias the variance by mean^2 * count / n.
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("var", torch.ones(n))

    @torch.no_grad()
    def update(self, observation: torch.Tensor, valid: torch.Tensor) -> None:
        """Merge the valid rows of a (..., W, 9) batch into the statistics (Chan et al. 1979)."""
        rows = observation[..., _CONTINUOUS].reshape(-1, len(_CONTINUOUS))
        weight = valid.reshape(-1, 1).to(rows.dtype)
        n = weight.sum()
        if not bool(n > 0):
            return
        batch_mean = (rows * weight).sum(0) / n
        # centre before squaring: E[x^2] - E[x]^2 cancels catastrophically in float32 (x ~ 2e4 rpm)
        batch_var = ((rows - batch_mean).pow(2) * weight).sum(0) / n
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """(..., W, 9) rows -> (..., W, IN_CHANNELS) standardised features."""
        std = self.var.clamp(min=1e-8).sqrt()
        return ((observation[..., _CONTINUOUS] - self.mean) / std).clamp(-10.0, 10.0)


def window_inputs(
    td: TensorDict, max_flights: int, player_keys: bool = False, counter_flights: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(observation (N, W, 9), valid (N, W), scalars (N, 1 or 3)) from an env TensorDict.

    The scalars are the age (flights flown / `counter_flights`, the newest row's flight index)
    and, with `player_keys`, `since_repair / counter_flights` and `repairs / REPAIRS_SCALE`;
    `counter_flights` 0 reads `max_flights`. Accepts the single-row view too: a td whose
    `observation` is (N, 9) is a window of one row.
    """
    max_flights = counter_flights or max_flights
    obs, valid, flight = td["observation"], td["valid"], td["flight"]
    if obs.dim() == 2:
        obs, valid, flight = obs.unsqueeze(1), valid.reshape(-1, 1), flight.reshape(-1, 1)
    scalars = [flight[:, -1].to(obs.dtype) / max_flights]
    if player_keys:
        scalars += [td["since_repair"].to(obs.dtype) / max_flights, td["repairs"].to(obs.dtype) / REPAIRS_SCALE]
    return obs, valid, torch.stack(scalars, dim=-1)


def counter_one_hot(td: TensorDict | Mapping[str, torch.Tensor], step_size: int, bins: int) -> torch.Tensor:
    """(*B, 2 * bins): `since_repair` in steps of `step_size` flights and `repairs`, each one-hot
    over `bins` classes (the last holds everything beyond). A schedule "repair after k(r) steps
    when r repairs are done" is then a sum of one weight per class in the logits, where scaled
    counters ask a ReLU layer to carve the same steps out of a line."""
    since = torch.div(td["since_repair"], step_size, rounding_mode="floor").clamp(0, bins - 1)
    repairs = td["repairs"].clamp(0, bins - 1)
    one_hot = nn.functional.one_hot
    return torch.cat((one_hot(since.long(), bins), one_hot(repairs.long(), bins)), dim=-1)


class SensorCNN(nn.Module):
    """Conv1d trunk over time: (N, W, 9) + valid (N, W) + scalars (N, S) -> features (N, hidden)."""

    def __init__(self, hidden: int = 64, channels: int = 32, scalars: int = 1) -> None:
        super().__init__()
        self.norm = FeatureNorm()
        self.conv = nn.Sequential(
            nn.Conv1d(IN_CHANNELS, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        # pooled mean and max over valid rows, + the newest row's features, + age (and counters)
        self.head = nn.Sequential(nn.Linear(2 * channels + IN_CHANNELS + scalars, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, observation: torch.Tensor, valid: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """Any leading batch dims: (*B, W, 9), (*B, W), (*B, S) -> (*B, hidden)."""
        batch = observation.shape[:-2]
        x, mask, scalars = self.prepare(observation, valid, scalars)
        return self.network(x, mask, scalars).reshape(*batch, -1)

    def prepare(
        self, observation: torch.Tensor, valid: torch.Tensor, scalars: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What `network` reads, flat: standardised rows (N, W, IN_CHANNELS), zero where padding, the
        mask (N, W, 1) and the scalars (N, S). No parameter is involved (the statistics are
        buffers), so an update can prepare a whole rollout once for all its epochs."""
        observation = observation.reshape(-1, *observation.shape[-2:])
        valid, scalars = valid.reshape(-1, valid.shape[-1]), scalars.reshape(-1, scalars.shape[-1])
        mask = valid.unsqueeze(-1).to(observation.dtype)  # (N, W, 1)
        return self.norm(observation) * mask, mask, scalars  # padding is exactly zero whatever it held

    def network(self, x: torch.Tensor, mask: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """The learned part, on `prepare`'s outputs: (N, hidden)."""
        h = self.conv(x.transpose(1, 2)).transpose(1, 2) * mask  # (N, W, C)
        count = mask.sum(1).clamp(min=1.0)
        mean = h.sum(1) / count
        maxed = h.masked_fill(mask == 0, float("-inf")).amax(1)
        maxed = torch.where(torch.isfinite(maxed), maxed, 0.0)
        return self.head(torch.cat((mean, maxed, x[:, -1], scalars), dim=-1))


class Checkpointable(nn.Module):
    """A model whose checkpoint names its configuration, never code: the constructor arguments
    in `CONFIG_KEYS`, as plain values (`config`, `from_config`)."""

    CONFIG_KEYS: tuple[str, ...] = ()

    def config(self) -> dict[str, Any]:
        """The arguments a checkpoint stores (`CONFIG_KEYS`), as plain values."""
        return {name: getattr(self, name) for name in self.CONFIG_KEYS}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Checkpointable:
        """The model a `config()` describes; other keys of a checkpoint's entry (the env's
        `history`, say) are ignored, and a value of another type than the argument's default is
        refused."""
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
        known = {}
        for name, value in config.items():
            if name in cls.CONFIG_KEYS:
                expected = type(defaults[name])
                if type(value) is not expected:
                    raise ValueError(f"{cls.__name__} config: {name} must be {expected.__name__}, got {value!r}")
                known[name] = value
        return cls(**known)


def _layer_init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(Checkpointable):
    """PPO's policy and value heads on one `SensorCNN` trunk.

    Both options need `player_keys` (they read the player-side counters) and use the fitted
    model's constants (`SimParams()`), which a player has as well as the simulator:

    - `belief_inputs` also feeds the head the state a player can estimate
      (`belief.estimate_state`: health, and the wear rate x 100), as features, not as a plan;
    - `plan_inputs` feeds it the `belief.BeliefPolicy` plan's action at that estimate (one-hot,
      planned for `step_size` flights a step): the network learns a correction to the plan
      (residual policy learning, Silver et al. 2018, arXiv:1812.06298).

    `cnn_rows` (0: all) convolves only the window's newest rows, so a long `history` can feed the
    estimate without multiplying the network's cost.
    """

    def __init__(
        self,
        hidden: int = 64,
        max_flights: int = CLIENT_STEPS_PER_EPISODE,
        player_keys: bool = False,
        belief_inputs: bool = False,
        plan_inputs: bool = False,
        step_size: int = 10,
        cnn_rows: int = 0,
        counter_flights: int = 0,
        counter_bins: int = 0,
        channels: int = 32,
    ) -> None:
        super().__init__()
        for name, on in (("belief_inputs", belief_inputs), ("plan_inputs", plan_inputs)):
            if on and not player_keys:
                raise ValueError(f"{name} needs player_keys: the estimate reads the player-side counters")
        self.max_flights, self.player_keys = max_flights, player_keys
        self.belief_inputs, self.plan_inputs, self.step_size = belief_inputs, plan_inputs, step_size
        if cnn_rows < 0:
            raise ValueError(f"cnn_rows must be >= 0 (0: the whole window), got {cnn_rows}")
        if counter_flights < 0:
            raise ValueError(f"counter_flights must be >= 0 (0: max_flights), got {counter_flights}")
        if counter_bins < 0 or (counter_bins and not player_keys):
            raise ValueError(f"counter_bins must be >= 0 and needs player_keys, got {counter_bins}")
        self.cnn_rows, self.counter_flights, self.counter_bins = cnn_rows, counter_flights, counter_bins
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        extra = (2 if belief_inputs else 0) + (NUM_ACTIONS if plan_inputs else 0) + 2 * counter_bins
        self.trunk = SensorCNN(hidden, channels, scalars=(3 if player_keys else 1) + extra)
        self._belief: BeliefPolicy | None = None  # built on first use: planning takes ~0.6 s
        self.actor = _layer_init(nn.Linear(hidden, NUM_ACTIONS), gain=0.01)
        self.critic = _layer_init(nn.Linear(hidden, 1), gain=1.0)

    # What a checkpoint stores of the model; the trunk's width is always the default's.
    CONFIG_KEYS = (
        "max_flights",
        "player_keys",
        "belief_inputs",
        "plan_inputs",
        "step_size",
        "cnn_rows",
        "counter_flights",
        "counter_bins",
        "channels",
    )

    @property
    def belief(self) -> BeliefPolicy:
        """The estimator and plan a player can build from the fitted model (`SimParams()`)."""
        if self._belief is None:
            self._belief = BeliefPolicy(SimParams(), self.step_size, self.max_flights)
        return self._belief

    def extra_inputs(self, td: TensorDict) -> torch.Tensor | None:
        """The head's belief and plan inputs (*B, E) for `td`, or None without them. A rollout can
        store them under `EXTRA_INPUTS_KEY`: `features` then reads them instead of estimating the
        state again in every update epoch."""
        if not (self.belief_inputs or self.plan_inputs):
            return None
        flat = td.reshape(-1) if td.batch_dims > 1 else td
        health, rate = self.belief.estimate(flat)
        extra = []
        if self.belief_inputs:
            extra.append(torch.stack((health, 100.0 * rate), dim=-1))
        if self.plan_inputs:
            planned = self.belief.oracle.act(flat["age"], flat["repairs"], flat["since_repair"], rate)
            extra.append(nn.functional.one_hot(planned, NUM_ACTIONS))
        return torch.cat(extra, dim=-1).to(flat["observation"].dtype).reshape(*td.batch_size, -1)

    def features(self, td: TensorDict) -> torch.Tensor:
        obs, valid, scalars = self._trunk_arguments(td)
        return self.trunk(obs, valid, scalars)

    def inputs(self, td: TensorDict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The trunk's prepared inputs for a flat batch `td` (`SensorCNN.prepare`): what `forward`
        takes, computed once per rollout for all of PPO's epochs and minibatches (indexing three
        tensors, not a TensorDict, and no normalising again)."""
        with torch.no_grad():
            return self.trunk.prepare(*self._trunk_arguments(td))

    def _trunk_arguments(self, td: TensorDict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs, valid, scalars = window_inputs(td, self.max_flights, self.player_keys, self.counter_flights)
        if self.cnn_rows:  # the convolution's cost grows with the rows; the estimate reads them all
            obs, valid = obs[..., -self.cnn_rows :, :], valid[..., -self.cnn_rows :]
        extra = td.get(EXTRA_INPUTS_KEY) if EXTRA_INPUTS_KEY in td.keys() else self.extra_inputs(td)
        if extra is not None:
            scalars = torch.cat((scalars, extra.to(scalars.dtype)), dim=-1)
        if self.counter_bins:
            scalars = torch.cat((scalars, counter_one_hot(td, self.step_size, self.counter_bins).to(scalars.dtype)), -1)
        return obs, valid, scalars

    def get_value(self, td: TensorDict) -> torch.Tensor:
        return self.critic(self.features(td)).squeeze(-1)

    def _heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probabilities (N, A), probabilities, entropy, value) of trunk features `h`. By hand
        rather than torch.distributions.Categorical, whose checks and caching cost more than this
        small network's forward at a rollout step's batch."""
        log_probs = torch.log_softmax(self.actor(h), dim=-1)
        probs = log_probs.exp()
        return log_probs, probs, -(probs * log_probs).sum(-1), self.critic(h).squeeze(-1)

    def get_action_and_value(self, td: TensorDict, action: torch.Tensor | None = None):
        """(action, log_prob, entropy, value); samples an action unless one is given."""
        log_probs, probs, entropy, value = self._heads(self.features(td))
        if action is None:
            action = torch.multinomial(probs, 1, replacement=True).squeeze(-1)
        return action, log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1), entropy, value

    def forward(
        self,
        inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        action: torch.Tensor,
        teacher_action: torch.Tensor | None = None,
    ):
        """PPO's update pass, what a `DistributedDataParallel` wrapper calls, on `inputs(td)` of a
        minibatch: (log_prob of `action`, entropy, value, log_prob of `teacher_action`) in one pass
        over the trunk. The last is the kickstarting term's (zeros without a teacher)."""
        log_probs, _, entropy, value = self._heads(self.trunk.network(*inputs))
        teacher = (
            log_probs.gather(-1, teacher_action.unsqueeze(-1)).squeeze(-1)
            if teacher_action is not None
            else torch.zeros_like(entropy)
        )
        return log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1), entropy, value, teacher

    @torch.no_grad()
    def act(self, td: TensorDict) -> torch.Tensor:
        """Greedy action (N,): what the evaluator and the plots use."""
        return self.actor(self.features(td)).argmax(-1)


class QNetwork(Checkpointable):
    """DQN's action values on the same `SensorCNN` trunk."""

    def __init__(
        self, hidden: int = 64, max_flights: int = CLIENT_STEPS_PER_EPISODE, player_keys: bool = False
    ) -> None:
        super().__init__()
        self.max_flights, self.player_keys = max_flights, player_keys
        self.trunk = SensorCNN(hidden, scalars=3 if player_keys else 1)
        self.q = nn.Linear(hidden, NUM_ACTIONS)

    CONFIG_KEYS = ("max_flights", "player_keys")  # what a checkpoint stores of the model

    def forward(self, td: TensorDict) -> torch.Tensor:
        return self.q(self.trunk(*window_inputs(td, self.max_flights, self.player_keys)))

    @torch.no_grad()
    def act(self, td: TensorDict) -> torch.Tensor:
        """Greedy action (N,)."""
        return self(td).argmax(-1)


# A training checkpoint holds one model's weights under its key, and its `config()` under
# "model" (with the env's `history` the model was trained on, which is not the model's).
CHECKPOINT_MODELS: dict[str, type[Checkpointable]] = {"agent": ActorCritic, "q_net": QNetwork}


def checkpoint_entries(model: Checkpointable, history: int) -> dict[str, Any]:
    """A model's entries of a training checkpoint, the ones `model_from_checkpoint` reads: its
    weights under its `CHECKPOINT_MODELS` key, and "model", its config with the env's window it
    trained with (the evaluator plays it with that window)."""
    key = next(k for k, cls in CHECKPOINT_MODELS.items() if type(model) is cls)
    return {key: model.state_dict(), "model": model.config() | {"history": history}}


def model_from_checkpoint(checkpoint: Mapping[str, Any]) -> Checkpointable:
    """The model of a training checkpoint (loaded with `torch.load(..., weights_only=True)`),
    built from its "model" entry and loaded with its weights; ValueError if it holds none."""
    for key, cls in CHECKPOINT_MODELS.items():
        if key in checkpoint:
            model = cls.from_config(checkpoint.get("model", {}))
            model.load_state_dict(checkpoint[key])
            return model
    raise ValueError(f"not a training checkpoint: it holds none of {list(CHECKPOINT_MODELS)}")


__all__ = [
    "CHECKPOINT_MODELS",
    "checkpoint_entries",
    "Checkpointable",
    "EXTRA_INPUTS_KEY",
    "ActorCritic",
    "FeatureNorm",
    "IN_CHANNELS",
    "QNetwork",
    "SensorCNN",
    "model_from_checkpoint",
    "window_inputs",
]
