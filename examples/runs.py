"""A training run's files: its folder (CleanRL's naming), checkpoints written atomically, the
TensorBoard (and W&B) logger, and what `main()` returns to a sweep tool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write atomically: a crash mid-save never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def run_dir(out: str, exp_name: str, seed: int, env_id: str = "TorchStudentEnv-v0") -> Path:
    """`out` if given, else CleanRL's `runs/<env>__<exp>__<seed>__<unix time>`: runs never overwrite."""
    import time

    return Path(out) if out else Path("runs") / f"{env_id}__{exp_name}__{seed}__{int(time.time())}"


class RunLogger:
    """Scalars for TensorBoard (`<run>/events.*`, CleanRL's `charts/*` and `losses/*` tags), and
    W&B when `track` (it mirrors the TensorBoard files). Both are imported lazily."""

    def __init__(self, path: Path, config: dict[str, Any], track: bool = False, project: str = "torch-student-env"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoard logging needs tensorboard: pip install 'torch-student-env[examples]'"
            ) from err
        if track:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("--track logs to Weights & Biases: pip install wandb, then wandb login") from err
            wandb.init(project=project, name=path.name, config=config, sync_tensorboard=True, dir=str(path))
        self.writer = SummaryWriter(str(path))
        table = "\n".join(f"|{k}|{v}|" for k, v in config.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.track = track

    def scalars(self, step: int, **values: float) -> None:
        """Log `tag=value` pairs; `charts_x` -> `charts/x`, `losses_y` -> `losses/y`."""
        for tag, value in values.items():
            self.writer.add_scalar(tag.replace("_", "/", 1), float(value), step)

    def close(self) -> None:
        self.writer.close()
        if self.track:
            import wandb

            wandb.finish()


def run_results(out: Path, best: dict[str, float], curve: list[dict[str, float]], held_out: dict) -> dict[str, Any]:
    """What an example's `main()` returns to a sweep tool: the run folder, the best and final
    validation returns, and the held-out table."""
    return {
        "run_dir": str(out),
        "best_validation_return": best["mean_return"],
        "best_env_steps": best["env_steps"],
        "final_validation_return": curve[-1]["mean_return"] if curve else None,
        "held_out": held_out,
    }
