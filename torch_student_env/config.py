"""`EnvConfig`: the shape-changing settings of an env, validated once at construction."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

import torch

from torch_student_env.sim.params import SimParams
from torch_student_env.spec import CLIENT_STEP_SIZE, CLIENT_STEPS_PER_EPISODE, MAX_STEP_SIZE, AutoresetMode


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_step_size(value: object) -> int:
    """Validate a step size (flights per step): an int in [1, 50], the challenge's limit."""
    _check_int("step_size", value, 1, MAX_STEP_SIZE)
    return value  # type: ignore[return-value]


MAX_SEED = 2**63 - 1  # seeds are int64 tensors inside the counter-based RNG


def same_device(device: torch.device, env_device: torch.device) -> bool:
    """Whether a tensor's `device` is the env's (normalised) device: equal, or equal once normalised."""
    if device == env_device:
        return True
    try:
        return normalize_device(device) == env_device
    except ValueError:  # a device this machine cannot use (meta, an absent GPU) is never the env's
        return False


def check_seed(value: object) -> int:
    """Validate a seed: an int in [0, 2**63 - 1]."""
    _check_int("seed", value, 0, MAX_SEED)
    return value  # type: ignore[return-value]


def check_state_tensor(name: str, value: object, like: torch.Tensor) -> torch.Tensor:
    """A checkpoint tensor with `like`'s shape and dtype and finite values, or a ValueError naming it."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"checkpoint entry {name!r} must be a tensor, got {type(value).__name__}")
    if value.shape != like.shape or value.dtype != like.dtype:
        raise ValueError(
            f"checkpoint entry {name!r} has shape {tuple(value.shape)} and dtype {value.dtype}; "
            f"this env needs {tuple(like.shape)} and {like.dtype}"
        )
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"checkpoint entry {name!r} holds NaN or infinite values")
    return value


def check_state_keys(name: str, state: object, expected: set[str]) -> dict:
    """A checkpoint dict with exactly the `expected` keys, or a ValueError naming the difference."""
    if not isinstance(state, dict):
        raise ValueError(f"{name} must be a dict, got {type(state).__name__}")
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(f"{name} does not match this env: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return state


def normalize_device(device: torch.device | str | int) -> torch.device:
    """A device as tensors report it, so that devices compare by value.

    `torch.device("cuda") != torch.device("cuda:0")`, yet every CUDA tensor reports an index:
    "cuda" becomes the current CUDA device ("cuda:0" on one GPU), and "cpu:0" becomes "cpu" (CPU
    tensors report no index). Raises ValueError for a name torch does not know and for an
    accelerator that is not available.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    if device.type == "cpu":
        return torch.device("cpu")
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "is_available") or not module.is_available():
        raise ValueError(
            f"device {str(device)!r} is not available on this machine: use 'cpu', or install a torch build for it"
        )
    if device.index is None:
        return torch.device(device.type, module.current_device())
    if device.index >= module.device_count():
        raise ValueError(
            f"device {str(device)!r} does not exist: this machine has {module.device_count()} {device.type} devices"
        )
    return device


# Without a fast=, envs on the CPU step compiled (ahead of time, any number of engines: see
# `compiled`); on accelerators, where each shape is its own just-in-time graph, from this many engines.
FAST_PATH_MIN_ENVS = 8192
# "0" makes eager the default everywhere (fast= still chooses per env): for runs that make many
# short-lived configurations, such as this project's test suite, where each would compile once.
FAST_ENV_VAR = "TORCH_STUDENT_ENV_FAST"
# "1" makes wait_compiled=True the default: fast envs wait for their compiled step instead of
# stepping eagerly while it builds (tests and benchmarks of the compiled step, reproducible runs).
WAIT_COMPILED_ENV_VAR = "TORCH_STUDENT_ENV_WAIT_COMPILED"


def default_fast(device: torch.device, num_envs: int) -> bool:
    """Whether an env compiles its step when `fast=None` (see `EnvConfig`)."""
    if os.environ.get(FAST_ENV_VAR, "1").strip() == "0":
        return False
    return device.type == "cpu" or num_envs >= FAST_PATH_MIN_ENVS


# Engine indices are folded into the counter-based RNG as 32-bit words: global indices (offset +
# i) must stay below 2**31 to remain distinct.
MAX_ENV_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class EnvConfig:
    """Settings that fix shapes and placement; the dynamics live in `SimParams`.

    `history` is the window length W (default: `step_size`). `max_steps_per_episode` counts
    flights, as the challenge's server does. `seed=None` draws one from the OS and records it.
    `fast` compiles the whole step (the simulator's kernel and the env's window update) into one
    graph. It applies to the embedded simulator only. On the CPU the graph is compiled ahead of
    time and kept on disk (`compiled`: one library for every count below 256 engines, one per
    count from there), and nobody waits for it: the first env of a configuration steps eagerly
    at once while a separate process builds the library (20-60 s on a cold cache), and moves to
    it between two steps once it is ready; later envs and processes load it in under a second
    (`env.step_kind` says which runs). `wait_compiled=True` waits for the library at the first
    step instead (the build starts at the first reset; None: `TORCH_STUDENT_ENV_WAIT_COMPILED=1`
    says so, else no): eager and compiled steps agree to float rounding, not bit for bit, so a run
    that must replay exactly from its seed whatever the cache holds asks for it. A machine that
    cannot compile steps eagerly after one warning, and remembers it. `python -m
    torch_student_env.build` builds the common configurations ahead of time. `fast=None`
    (default) turns it on for CPU envs, and on accelerators from `FAST_PATH_MIN_ENVS` engines
    (there `torch.compile` makes one graph per shape, on the first step); the environment
    variable `TORCH_STUDENT_ENV_FAST=0` makes eager the default. A fast accelerator env raises
    `torch._dynamo.config.recompile_limit`, a process-wide setting, to at least
    `fast_path.FAST_PATH_GRAPHS` (64); it never lowers it.
    `env_offset` makes this env's engine i the engine `env_offset + i` of one big env with the
    same seed: shards of a run on several processes or devices reproduce one large env.
    `device` is normalised (`normalize_device`): "cuda" becomes "cuda:<current>", "cpu:0" "cpu".
    `final_observation=False` leaves the terminal windows (`spec.FINAL_KEYS`) out of `step`'s
    outputs: they are its largest outputs, (N, W, 9) every step and mostly zeros, and a loop
    that does not bootstrap from them (no truncation, or autoreset disabled) saves about a
    third of a large step on CPU.
    `autoreset_mode` (`spec.AutoresetMode` or its value) says when a finished engine starts
    its next episode: "same_step" (default), "next_step" (the challenge server's rule) or
    "disabled".
    `sim_variants` (several `SimParams`, see `sim.variants`) makes each episode run one of them,
    drawn from (seed, env, episode) alone: domain randomisation over plausible models.
    """

    num_envs: int = 4
    step_size: int = CLIENT_STEP_SIZE
    history: int | None = None
    max_steps_per_episode: int = CLIENT_STEPS_PER_EPISODE
    autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP
    privileged: bool = False
    device: torch.device | str = "cpu"
    seed: int | None = None
    validate_actions: bool = True
    fast: bool | None = None
    wait_compiled: bool | None = None
    env_offset: int = 0
    final_observation: bool = True
    sim_params: SimParams = field(default_factory=SimParams)
    sim_variants: tuple[SimParams, ...] = ()

    @property
    def models(self) -> tuple[SimParams, ...]:
        """The simulator's models: the ensemble when `sim_variants` is set, else `sim_params` alone."""
        return self.sim_variants or (self.sim_params,)

    def __post_init__(self) -> None:
        _check_int("num_envs", self.num_envs, 1)
        check_step_size(self.step_size)
        if self.history is None:
            object.__setattr__(self, "history", self.step_size)
        _check_int("history", self.history, 1, 4096)
        _check_int("max_steps_per_episode", self.max_steps_per_episode, 1)
        if self.seed is None:
            object.__setattr__(self, "seed", secrets.randbits(63))
        check_seed(self.seed)
        object.__setattr__(self, "device", normalize_device(self.device))
        _check_int("env_offset", self.env_offset, 0, MAX_ENV_OFFSET - self.num_envs)
        try:
            object.__setattr__(self, "autoreset_mode", AutoresetMode(self.autoreset_mode))
        except ValueError:
            names = ", ".join(repr(m.value) for m in AutoresetMode)
            raise ValueError(f"autoreset_mode must be one of {names}, got {self.autoreset_mode!r}") from None
        if self.fast is None:
            object.__setattr__(self, "fast", default_fast(self.device, self.num_envs))
        if self.wait_compiled is None:
            object.__setattr__(self, "wait_compiled", os.environ.get(WAIT_COMPILED_ENV_VAR, "0").strip() == "1")
        if not isinstance(self.wait_compiled, bool):
            raise TypeError(f"wait_compiled must be a bool, got {self.wait_compiled!r}")
        if not isinstance(self.final_observation, bool):
            raise TypeError(f"final_observation must be a bool, got {self.final_observation!r}")
        if not isinstance(self.sim_params, SimParams):
            raise TypeError(f"sim_params must be a SimParams, got {type(self.sim_params).__name__}")
        if self.sim_variants:
            from torch_student_env.sim.engine import check_variants

            object.__setattr__(self, "sim_variants", check_variants(self.sim_variants))
            # the fields the variants share (economics, sensors) are read from `sim_params`
            object.__setattr__(self, "sim_params", self.sim_variants[0])
