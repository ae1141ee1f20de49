"""compat over the reference server: the seed notebook's loop unchanged, and the seed client's return types."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="remote tests need the [server] extra")
pytest.importorskip("uvicorn", reason="remote tests need the [server] extra")

from helpers import TOKEN_A  # noqa: E402


# -- the seed client's API --------------------------------------------------------------------
def _seed_loop() -> str:
    """The seed notebook's loop, as quoted in examples/quickstart.py's docstring."""
    doc = (Path(__file__).resolve().parents[1] / "examples" / "quickstart.py").read_text().split('"""')[1]
    start = doc.index("    import numpy as np")
    end = doc.index("    env.close()") + len("    env.close()")
    return textwrap.dedent(doc[start:end])


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_seed_notebook_loop_runs_unchanged_through_compat(where, server_url, monkeypatch, capsys):
    if where == "server":
        monkeypatch.setenv("SERVER_URL", server_url)  # how the seed client is pointed at a server
    else:
        monkeypatch.delenv("SERVER_URL", raising=False)
    np.random.seed(0)
    namespace: dict = {}
    exec(compile(_seed_loop(), "seed_notebook", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Environment created with 4 parallel environments" in out and "Step 40:" in out
    env = namespace["env"]
    assert (type(env.episode_ids[0]) is str) and len(env.episode_ids) == 4
    if where == "server":
        assert not env.episode_ids[0].startswith("local-")


def test_compat_return_types_match_the_seed_client(server_url):
    from torch_student_env.compat import create_student_gym_env, create_student_gym_env_vectorized

    for url in (None, server_url):
        env = create_student_gym_env_vectorized(
            num_envs=3, step_size=10, server_url=url, user_token=TOKEN_A, prod=False, seed=1
        )
        obs, infos = env.reset()
        assert obs.shape == (3, 9) and obs.dtype == np.float32 and len(infos) == 3
        obs, rewards, term, trunc, infos = env.step(np.array([0, 2, 0]))
        assert isinstance(obs, list) and [o.shape for o in obs] == [(10, 9), (1, 9), (10, 9)]
        assert rewards.dtype == np.float32 and term.tolist() == [False, True, False]
        assert env.get_terminated_env_indices() == [1] and env.get_active_count() == 2
        assert "degradation" in infos[0] and infos[0]["step"] == 10
        reset_obs, reset_infos = env.reset_specific_envs([1])
        assert reset_obs.shape == (1, 9) and env.get_active_count() == 3
        obs, *_ = env.step([0, 0, 0], step_size=3, return_all_states=False)
        assert obs.shape == (3, 9)
        env.close()
        single = create_student_gym_env(server_url=url, user_token=TOKEN_A, seed=2)
        o, info = single.reset()
        assert o.shape == (9,) and info["step"] == 0
        o, r, te, tr, info = single.step(0, step_size=5)
        assert o.shape == (5, 9) and isinstance(r, float) and info["step"] == 5 and "degradation" not in info
        single.close()
