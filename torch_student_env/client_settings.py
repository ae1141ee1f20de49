"""The challenge client's settings: arguments, then `$VARS` (a `.env` file included), then defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch_student_env.spec import CLIENT_STEPS_PER_EPISODE, CLIENT_TIMEOUT_S, DEFAULT_TOKEN


def load_dotenv(path: str | Path = ".env") -> None:
    """Set `KEY=VALUE` lines of a `.env` file as environment variables, never overriding one
    already set (python-dotenv's default, which the client calls). Quotes and `export` are
    stripped; `#` starts a comment line. A missing file is not an error."""
    path = Path(path)
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key, value)


def setting(value: Any, env_var: str, default: Any, kind: type) -> Any:
    """Argument, else environment variable, else default (the seed client's order)."""
    if value is not None:
        return value
    raw = os.environ.get(env_var)
    if raw is None:
        return default
    if kind is bool:
        return raw.strip().lower() == "true"
    try:
        return kind(raw)
    except ValueError as err:
        raise ValueError(f"${env_var}={raw!r} is not a valid {kind.__name__}") from err


def connection_settings(max_steps_per_episode, auto_reset, server_url, user_token, timeout) -> dict[str, Any]:
    """The settings both factories resolve from arguments, then environment variables (a `.env`
    file included), then defaults."""
    load_dotenv()
    return {
        "max_steps_per_episode": setting(max_steps_per_episode, "MAX_STEPS_PER_EPISODE", CLIENT_STEPS_PER_EPISODE, int),
        "auto_reset": setting(auto_reset, "AUTO_RESET", True, bool),
        "server_url": setting(server_url, "SERVER_URL", None, str),
        "user_token": setting(user_token, "USER_TOKEN", DEFAULT_TOKEN, str),
        "timeout": setting(timeout, "TIMEOUT", CLIENT_TIMEOUT_S, float),
    }
