#!/usr/bin/env bash
# Each extra installed alone in a fresh venv: the package imports, and the extra's entry point
# works. `[test]` installs every extra, so the suite alone cannot see an extra that needs another.
#
#     bash scripts/check_extras.sh            # every extra (a few minutes each: torch per venv)
#     bash scripts/check_extras.sh gym sb3    # some
#
# Needs the package registries (PyPI) and torch==2.13.0's local wheel, as `.ci/run` does.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=("$@")
[ ${#extras[@]} -gt 0 ] || extras=(server torchrl gym sb3 examples)

declare -A probe=(
  [server]="from torch_student_env.server import create_app; create_app(tokens={'t'})"
  [torchrl]="from torch_student_env.adapters.torchrl import TorchRLStudentEnv; TorchRLStudentEnv(num_envs=2, seed=0).rollout(3)"
  [gym]="import gymnasium; e = gymnasium.make('TorchStudentEnv-v0'); e.reset(seed=0); e.step(0)"
  [sb3]="from torch_student_env.adapters.sb3 import SB3VecEnv; v = SB3VecEnv(num_envs=2, seed=0); v.reset()"
  [examples]="import tqdm, matplotlib; from torch_student_env.plotting import plot_learning_curve"
)

for extra in "${extras[@]}"; do
  venv=$(mktemp -d)/venv
  python -m venv "$venv"
  "$venv/bin/python" -m pip install -q torch==2.13.0
  "$venv/bin/python" -m pip install -q ".[$extra]"
  "$venv/bin/python" -c "import torch_student_env; ${probe[$extra]}; print('[$extra] alone: ok')"
  rm -rf "$(dirname "$venv")"
done
