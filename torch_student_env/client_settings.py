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


def server_url_setting(value: str | None, default: str | None = None) -> str | None:
    """The server's URL: the argument, else `$SERVER_URL`, else `default` (None, compat's: the
    embedded simulator; the remote backend's: `DEFAULT_SERVER_URL`). The one lookup of the variable."""
    return setting(value or None, "SERVER_URL", default, str) or default


def user_token_setting(value: str | None) -> str:
    """The user's token: the argument, else `$USER_TOKEN`, else the client's default. The one lookup."""
    return setting(value or None, "USER_TOKEN", DEFAULT_TOKEN, str) or DEFAULT_TOKEN


def connection_settings(max_steps_per_episode, auto_reset, server_url, user_token, timeout) -> dict[str, Any]:
    """The settings both factories resolve from arguments, then environment variables (a `.env`
    file included), then defaults."""
    load_dotenv()
    return {
        "max_steps_per_episode": setting(max_steps_per_episode, "MAX_STEPS_PER_EPISODE", CLIENT_STEPS_PER_EPISODE, int),
        "auto_reset": setting(auto_reset, "AUTO_RESET", True, bool),
        "server_url": server_url_setting(server_url),
        "user_token": user_token_setting(user_token),
        "timeout": setting(timeout, "TIMEOUT", CLIENT_TIMEOUT_S, float),
    }
