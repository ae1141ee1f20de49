"""The training examples' command lines: dataclass flags (`arg`, `parse_args`) and the checks of
flags that only make sense together."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def parse_args(cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """Flags from a dataclass: `field_name` -> `--field-name`, typed, help from the field metadata."""
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool", "bool | None"):  # None: leave the choice to the library
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(
                f.type if isinstance(f.type, str) else f.type.__name__, str
            )
            parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: {f.default})")
    return cls(**vars(parser.parse_args(argv)))


def arg(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a help string (CleanRL style: every knob documented)."""
    return dataclasses.field(default=default, metadata={"help": help})


def check_counter_bins(counter_bins: int, player_keys: bool) -> None:
    """Refuse, before anything is built, counter classes without the counters they are made of."""
    if counter_bins < 0:
        raise SystemExit(f"--counter-bins must be >= 0, got {counter_bins}")
    if counter_bins and not player_keys:
        raise SystemExit("--counter-bins reads the player-side counters: drop --no-player-keys or add --counter-bins 0")
