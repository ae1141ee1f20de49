"""Stable-Baselines3's PPO on the embedded simulator: the recipe for students who reach for SB3.

    pip install -e ".[sb3,examples]"
    python examples/sb3_ppo.py                 # < 10 min on a 2-core CPU

SB3's own `PPO("MultiInputPolicy", VecNormalize(SB3VecEnv(player_keys=True)))`, with what
mattered (README, "Stable-Baselines3", measures each):
- the counters (`player`: age, since_repair, repairs) also one-hot (`CounterClasses`): the best
  schedule repairs after a number of flights that shrinks with the repairs, one weight per class
  one-hot, where the MLP on the counters as numbers learns a fixed period (the time-based rule);
- `gamma=1`: the challenge scores the undiscounted sum of an episode's rewards;
- rewards times a constant (`--reward-scale`) instead of VecNormalize's running return scaling.
The window (10 rows) and the counters are standardised by VecNormalize.

Writes to --out: eval.md (the policy against every baseline on held-out seeds), eval.json,
learning_curve.png and episode.png, and checkpoint.pt (the weights and the observation statistics,
read back by `load_policy` with `weights_only=True`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from flags import arg, check_counter_bins, parse_args
from report import FinalEvaluation, TrainingRun, final_report, verdict
from tqdm.auto import tqdm
from validation import Validator

from runs import run_dir, run_results, save_checkpoint
from torch_student_env.adapters import require
from torch_student_env.adapters.numpy_io import gym, observation
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.models import counter_one_hot
from torch_student_env.spec import PLAYER_KEYS

require("stable_baselines3", "sb3")
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize  # noqa: E402

from torch_student_env.adapters.sb3 import SB3VecEnv  # noqa: E402


@dataclasses.dataclass
class Args:
    num_envs: int = arg(32, "parallel engines in the training env")
    total_steps: int = arg(2_000_000, "env steps to train for (one step = step_size flights of one engine)")
    seed: int = arg(1, "seed of the training env and the model")
    out: str = arg("", "output folder (default: runs/TorchStudentEnv-v0__sb3_ppo__<seed>__<time>)")
    history: int = arg(10, "rows in each env's window: the policy reads them flattened")
    player_keys: bool = arg(True, "the policy also reads age, since_repair and repairs")
    counter_bins: int = arg(16, "and since_repair (in steps) and repairs one-hot, this many classes each (0: not)")
    gamma: float = arg(1.0, "discount per env step (the score is undiscounted)")
    gae_lambda: float = arg(0.95, "GAE lambda")
    n_steps: int = arg(128, "rollout length per env between updates")
    batch_size: int = arg(1024, "minibatch size")
    n_epochs: int = arg(10, "epochs over each rollout")
    learning_rate: float = arg(3e-4, "Adam learning rate (annealed linearly to 0)")
    ent_coef: float = arg(0.0, "entropy bonus")
    norm_reward: bool = arg(False, "VecNormalize's running return scaling (else --reward-scale)")
    reward_scale: float = arg(1e-3, "rewards are multiplied by this for learning, unless --norm-reward")
    net_arch: str = arg("64,64", "hidden layers of the policy and value MLPs")
    eval_every: int = arg(200_000, "env steps between greedy evaluations")
    eval_envs: int = arg(256, "episodes per periodic evaluation (validation seed)")
    final_eval_envs: int = arg(1024, "held-out episodes for the final table")
    score_episodes: int = arg(SCORE_WINDOW, "the challenge score's window: the last K episodes of a stream on 4 envs")
    variant_eval: bool = arg(False, "the final table also gives each policy's worst plausible model")


class CounterClasses(VecEnvWrapper):
    """Adds `counter_classes` to the Dict observation: since_repair (in steps) and repairs one-hot,
    `bins` classes each (`models.counter_one_hot`, what the main job's head reads). The best
    schedule is a threshold on since_repair that moves with repairs; one-hot it is one weight
    per class, where an MLP on the scaled counters must carve it out of a line."""

    def __init__(self, venv, step_size: int, bins: int) -> None:
        space = dict(venv.observation_space.spaces)
        space["counter_classes"] = gym.spaces.Box(0.0, 1.0, shape=(2 * bins,), dtype=np.float32)
        super().__init__(venv, observation_space=gym.spaces.Dict(space))
        self.step_size, self.bins = step_size, bins

    def add_classes(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        player = torch.as_tensor(obs["player"]).long()
        counters = {key: player[..., PLAYER_KEYS.index(key)] for key in ("since_repair", "repairs")}
        classes = counter_one_hot(counters, self.step_size, self.bins)
        return obs | {"counter_classes": classes.numpy().astype(np.float32)}

    def reset(self):
        return self.add_classes(self.venv.reset())

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self.add_classes(info["terminal_observation"])
        return self.add_classes(obs), rewards, dones, infos


class ScaleReward(VecEnvWrapper):
    """Rewards times a constant: the money units are large (a failure is -1,000), and a constant
    keeps the value targets' scale the same through training, where VecNormalize's running
    return estimate drifts as the policy improves."""

    def __init__(self, venv, scale: float) -> None:
        super().__init__(venv)
        self.scale = scale

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards * self.scale, dones, infos


def build_env(args: Args, num_envs: int, seed: int) -> tuple[VecNormalize, CounterClasses | None]:
    """The VecEnv SB3 trains on: the adapter, the counter classes (`--counter-bins`), rewards
    scaled (or VecNormalize's running scaling, `--norm-reward`), the window and the counters
    standardised (the one-hot classes are read as they are)."""
    env = SB3VecEnv(num_envs=num_envs, seed=seed, history=args.history, player_keys=args.player_keys)
    classes = CounterClasses(env, env.env.step_size, args.counter_bins) if args.counter_bins else None
    inner = ScaleReward(classes if classes is not None else env, 1.0 if args.norm_reward else args.reward_scale)
    keys = {"norm_obs_keys": ["observation", "player"]} if args.player_keys else {}
    return VecNormalize(inner, norm_reward=args.norm_reward, gamma=args.gamma, **keys), classes


def new_model(args: Args, venv: VecNormalize) -> PPO:
    """SB3's PPO with the recipe's settings (`Args`)."""
    return PPO(
        "MultiInputPolicy" if args.player_keys else "MlpPolicy",
        venv,
        learning_rate=lambda remaining: args.learning_rate * remaining,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        ent_coef=args.ent_coef,
        policy_kwargs={"net_arch": [int(width) for width in args.net_arch.split(",")]},
        seed=args.seed,
        device="cpu",
    )


def save_policy(path: Path, args: Args, model: PPO, venv: VecNormalize) -> None:
    """The policy's weights, the observation statistics and the flags, as tensors and plain
    values: `load_policy` reads them with `weights_only=True`, where SB3's own zip and
    VecNormalize's pickle would run whatever code a file holds."""
    stats = venv.obs_rms if isinstance(venv.obs_rms, dict) else {"": venv.obs_rms}
    normalization = {
        key: {"mean": torch.as_tensor(rms.mean), "var": torch.as_tensor(rms.var), "count": float(rms.count)}
        for key, rms in stats.items()
    }
    save_checkpoint(path, policy=model.policy.state_dict(), normalization=normalization, args=dataclasses.asdict(args))


def load_policy(path: str | Path):
    """A run's `checkpoint.pt` as a greedy `policy(td) -> actions` of the env's API."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    args = Args(**saved["args"])
    venv, classes = build_env(args, num_envs=1, seed=0)
    venv.training = False
    stats = venv.obs_rms if isinstance(venv.obs_rms, dict) else {"": venv.obs_rms}
    for key, rms in stats.items():
        rms.mean, rms.var = saved["normalization"][key]["mean"].numpy(), saved["normalization"][key]["var"].numpy()
        rms.count = saved["normalization"][key]["count"]
    # one env to build the network on; a batch of one rollout keeps SB3 from warning about it
    model = new_model(dataclasses.replace(args, batch_size=args.n_steps), venv)
    model.policy.load_state_dict(saved["policy"])
    return as_policy(model, venv, classes, args.player_keys)


def as_policy(model: PPO, venv: VecNormalize, classes: CounterClasses | None, player_keys: bool):
    """The trained model as a `policy(td) -> actions` of the env's API (greedy), reading the
    observations as SB3 did in training: the adapter's numpy layout, the counter classes when
    trained with them, normalised by `venv`'s statistics."""

    def policy(td) -> torch.Tensor:
        obs = observation(td, player_keys)
        if classes is not None:
            obs = classes.add_classes(obs)
        actions, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
        return torch.as_tensor(actions, device=td.device)

    return policy


class Validation(BaseCallback):
    """The learning curve: a `validation.Validator` point every `every` env steps (the greedy
    policy on the validation seed's engines, paired with belief there)."""

    def __init__(self, args: Args, classes: CounterClasses | None) -> None:
        super().__init__()
        self.args, self.classes, self.curve, self.next_eval = args, classes, [], 0
        self.validator = Validator(args.eval_envs, history=args.history)
        self.best = {"mean_return": float("-inf"), "env_steps": 0}
        self.bar = tqdm(total=args.total_steps, unit="step", desc="sb3_ppo", dynamic_ncols=True)

    def _on_step(self) -> bool:
        self.bar.update(self.model.num_timesteps - self.bar.n)
        if self.num_timesteps >= self.next_eval:
            self.next_eval += self.args.eval_every
            self.evaluate()
        return True

    def evaluate(self) -> None:
        policy = as_policy(self.model, self.training_env, self.classes, self.args.player_keys)
        point = self.validator(policy, self.num_timesteps)
        self.curve.append(point)
        self.bar.write(
            f"{self.num_timesteps:>10,} steps: validation return {point['mean_return']:,.0f}, "
            f"{point['paired_diff']:+,.0f} ± {point['paired_ci95']:,.0f} to belief"
        )
        if point["mean_return"] > self.best["mean_return"]:
            self.best = {"mean_return": point["mean_return"], "env_steps": self.num_timesteps}


def main(args: Args) -> dict:
    """Train, validate along the way, then the final table against every baseline."""
    out = run_dir(args.out, "sb3_ppo", args.seed)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    check_counter_bins(args.counter_bins, args.player_keys)
    venv, classes = build_env(args, args.num_envs, args.seed)
    model = new_model(args, venv)
    validation = Validation(args, classes)
    start = time.perf_counter()
    model.learn(args.total_steps, callback=validation, progress_bar=False)
    if validation.curve[-1]["env_steps"] != model.num_timesteps:  # the curve ends where training does
        validation.evaluate()
    validation.bar.close()
    wall = time.perf_counter() - start
    save_policy(out / "checkpoint.pt", args, model, venv)
    print(f"trained {model.num_timesteps:,} env steps in {wall:.0f} s")
    venv.training = False  # the final table reads the statistics as they ended
    name = "sb3_ppo"
    results = final_report(
        {name: as_policy(model, venv, classes, args.player_keys)},
        out,
        TrainingRun(
            validation.curve,
            validation.best,
            validation.validator.references(),
            {"train_seconds": wall, "env_steps": model.num_timesteps},
        ),
        FinalEvaluation(
            args.final_eval_envs, variants=args.variant_eval, history=args.history, score_episodes=args.score_episodes
        ),
        "cpu",
    )
    print((out / "eval.md").read_text())
    print(verdict(name, results))
    return run_results(out, validation.best, validation.curve, results)


if __name__ == "__main__":
    main(parse_args(Args, __doc__))
