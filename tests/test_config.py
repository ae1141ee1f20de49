"""Settings are checked when the env is made, with errors that name the bad value."""

from __future__ import annotations

import dataclasses

import pytest

from torch_student_env import SimParams, make_env


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(num_envs=0), ValueError, "num_envs must be >= 1, got 0"),
        (dict(num_envs=2.0), TypeError, "num_envs must be an int"),
        (dict(step_size=51), ValueError, "step_size must be in \\[1, 50\\], got 51"),
        (dict(history=0), ValueError, "history must be in"),
        (dict(seed=-1), ValueError, "seed must be in \\[0, 9223372036854775807\\], got -1"),
        (dict(device="gpu7"), ValueError, "device must name a torch device"),
        (dict(max_steps_per_episode=0), ValueError, "max_steps_per_episode"),
        (dict(backend="cloud"), ValueError, "backend must be one of"),
        (dict(final_observation="no"), TypeError, "final_observation must be a bool, got 'no'"),
        (dict(server_url="http://127.0.0.1:1"), TypeError, "only apply to backend='remote'"),
    ],
)
def test_config_errors_name_the_bad_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_env(**kwargs)


def test_sim_params_validation():
    with pytest.raises(ValueError, match="dtamb_persistence must be in"):
        dataclasses.replace(SimParams(), dtamb_persistence=1.0)
    with pytest.raises(ValueError, match="7 values"):
        dataclasses.replace(SimParams(), sensor_noise_std=(1.0,))
    with pytest.raises(ValueError, match="wear_rate_after_repair needs 7 values"):
        dataclasses.replace(SimParams(), wear_rate_after_repair=(0.01,))
    with pytest.raises(ValueError, match="wear_rate_new must be > 0"):
        dataclasses.replace(SimParams(), wear_rate_new=0.0)


def test_auto_reset_is_deprecated_and_names_autoreset_mode():
    """The option's old spelling still builds the env it meant, with a warning naming its successor."""
    for auto_reset, mode in ((True, "same_step"), (False, "disabled")):
        with pytest.warns(DeprecationWarning, match=f"autoreset_mode='{mode}'"):
            env = make_env(num_envs=2, auto_reset=auto_reset)
        assert env.autoreset_mode.value == mode
    with pytest.raises(TypeError, match="not both"):
        make_env(num_envs=2, auto_reset=False, autoreset_mode="next_step")
    with pytest.raises(TypeError, match="must be a bool"):
        make_env(num_envs=2, auto_reset="yes")
