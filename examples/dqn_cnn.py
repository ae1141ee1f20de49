"""Double DQN with the same 1D-CNN trunk, a target network and a replay buffer held on the device.

    python examples/dqn_cnn.py                  # short default run (~1-2 min on a 2-core CPU)
    python examples/dqn_cnn.py --device cuda --num-envs 256 --total-steps 2000000

Writes to --out: checkpoint.pt, eval.md, eval.json, learning_curve.png, episode.png.
CleanRL's dqn.py layout; the replay buffer is a TensorDict ring on the env's device.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch
from flags import arg, parse_args
from report import FinalEvaluation, TrainingRun, final_report
from tensordict import TensorDict
from tqdm.auto import tqdm
from validation import Validator

from runs import RunLogger, run_dir, run_results, save_checkpoint
from torch_student_env import make_env
from torch_student_env.config import normalize_device
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.models import QNetwork, checkpoint_entries, model_from_checkpoint
from torch_student_env.spec import FINAL_WINDOW_KEYS

OBS_KEYS = ("observation", "valid", "flight")


@dataclasses.dataclass
class Args:
    num_envs: int = arg(64, "parallel engines in the training env")
    total_steps: int = arg(150_000, "env steps to train for")
    device: str = arg("cpu", "torch device for env, networks and replay buffer")
    seed: int = arg(1, "seed of the training env and the networks")
    out: str = arg("", "output folder (default: runs/TorchStudentEnv-v0__dqn_cnn__<seed>__<time>)")
    track: bool = arg(False, "also log to Weights & Biases (pip install wandb)")
    buffer_size: int = arg(50_000, "replay capacity (transitions)")
    batch_size: int = arg(256, "minibatch size")
    learning_rate: float = arg(2.5e-4, "Adam learning rate")
    gamma: float = arg(0.99, "discount per env step")
    tau: float = arg(0.005, "soft target-network update rate per gradient step")
    learning_starts: int = arg(5_000, "env steps before learning starts")
    gradient_steps: int = arg(1, "gradient steps per vectorised env step")
    explore_probs: str = arg("0.85,0.10,0.05", "distribution of exploratory actions (fly, repair, sell)")
    start_epsilon: float = arg(1.0, "initial exploration rate")
    end_epsilon: float = arg(0.02, "final exploration rate")
    exploration_fraction: float = arg(0.4, "fraction of training over which epsilon decays")
    reward_scale: float = arg(1e-3, "rewards are multiplied by this for learning")
    eval_every: int = arg(25_000, "env steps between greedy evaluations")
    eval_envs: int = arg(256, "episodes per periodic evaluation")
    final_eval_envs: int = arg(1024, "held-out episodes for the final table")
    score_episodes: int = arg(SCORE_WINDOW, "the challenge score's window: the last K episodes of a stream on 4 envs")


class ReplayBuffer:
    """A ring of transitions as one preallocated TensorDict on the device; no host copies."""

    def __init__(self, capacity: int, example: TensorDict, device: torch.device) -> None:
        one = example[0]
        spec = {f"obs_{k}": one[k] for k in OBS_KEYS} | {f"next_{k}": one[k] for k in OBS_KEYS}
        data = {k: torch.zeros((capacity,) + v.shape, dtype=v.dtype, device=device) for k, v in spec.items()}
        data |= {
            "action": torch.zeros(capacity, dtype=torch.int64, device=device),
            "reward": torch.zeros(capacity, device=device),
            "terminated": torch.zeros(capacity, device=device),
        }
        self.data = TensorDict(data, batch_size=[capacity], device=device)
        self.capacity, self.cursor, self.size = capacity, 0, 0

    def add(self, batch: TensorDict) -> None:
        n = batch.batch_size[0]
        index = (torch.arange(n, device=self.data.device) + self.cursor) % self.capacity
        self.data[index] = batch
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> TensorDict:
        index = torch.randint(0, self.size, (batch_size,), device=self.data.device, generator=generator)
        return self.data[index]


def _view(batch: TensorDict, prefix: str) -> TensorDict:
    return TensorDict({k: batch[f"{prefix}_{k}"] for k in OBS_KEYS}, batch_size=batch.batch_size)


def main(args: Args) -> dict:
    out = run_dir(args.out, "dqn_cnn", args.seed)
    out.mkdir(parents=True, exist_ok=True)
    device = normalize_device(args.device)  # "cuda" -> "cuda:0", "cpu:0" -> "cpu"
    torch.manual_seed(args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    # wait_compiled: a cold cache's first step waits for the compiled step, so a seed replays exactly
    env = make_env(num_envs=args.num_envs, device=device, seed=args.seed, wait_compiled=True)
    log = RunLogger(out, dataclasses.asdict(args), args.track)
    best = {"mean_return": float("-inf"), "env_steps": 0}  # by validation return
    q_net = QNetwork(max_flights=env.config.max_steps_per_episode).to(device)
    target = copy.deepcopy(q_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate)

    explore_probs = torch.tensor([float(p) for p in args.explore_probs.split(",")], device=device)
    if explore_probs.shape != (3,) or (explore_probs < 0).any():
        raise ValueError(f"--explore-probs needs 3 non-negative numbers, got {args.explore_probs!r}")
    td = env.reset()
    buffer = ReplayBuffer(args.buffer_size, td.select(*OBS_KEYS), device)
    curve, global_step, next_eval, env_time = [], 0, args.eval_every, 0.0
    validator = Validator(args.eval_envs, device)  # plays the baselines on the validation engines once
    start = time.perf_counter()
    bar = tqdm(total=args.total_steps, unit="step", desc="dqn_cnn", dynamic_ncols=True)
    while global_step < args.total_steps:
        # ALGO LOGIC: epsilon-greedy on the device
        fraction = min(1.0, global_step / (args.exploration_fraction * args.total_steps))
        epsilon = args.start_epsilon + fraction * (args.end_epsilon - args.start_epsilon)
        q_net.trunk.norm.update(td["observation"], td["valid"])
        greedy = q_net.act(td)
        # Uniform exploration sells 1 step in 3, so no engine would ever grow old in the buffer;
        # a prior that mostly flies gives the late-life states the Q-function must learn.
        random_action = torch.multinomial(explore_probs, greedy.numel(), replacement=True, generator=generator)
        explore = torch.rand(greedy.shape, device=device, generator=generator) < epsilon
        action = torch.where(explore, random_action, greedy)
        t_env = time.perf_counter()
        next_td = env.step(action)
        env_time += time.perf_counter() - t_env
        global_step += args.num_envs

        # The next state of a finished episode is its terminal window, not the reset window;
        # only termination (not truncation) stops bootstrapping.
        done = next_td["done"]
        real_next = {
            key: torch.where(done.view(-1, *(1,) * (next_td[key].dim() - 1)), next_td[final], next_td[key])
            for key, final in FINAL_WINDOW_KEYS.items()
        }
        transition = {f"obs_{k}": td[k] for k in OBS_KEYS} | {f"next_{k}": v for k, v in real_next.items()}
        transition |= {
            "action": action,
            "reward": next_td["reward"] * args.reward_scale,
            "terminated": next_td["terminated"].to(torch.float32),
        }
        buffer.add(TensorDict(transition, batch_size=[args.num_envs]))
        td = next_td

        # ALGO LOGIC: double DQN update with a soft target network
        if global_step > args.learning_starts:
            for _ in range(args.gradient_steps):
                batch = buffer.sample(args.batch_size, generator)
                with torch.no_grad():
                    next_obs = _view(batch, "next")
                    greedy_next = q_net(next_obs).argmax(-1, keepdim=True)
                    next_q = target(next_obs).gather(1, greedy_next).squeeze(1)
                    target_q = batch["reward"] + args.gamma * (1.0 - batch["terminated"]) * next_q
                q = q_net(_view(batch, "obs")).gather(1, batch["action"].unsqueeze(1)).squeeze(1)
                loss = torch.nn.functional.smooth_l1_loss(q, target_q)
                if global_step % 1000 < args.num_envs:  # CleanRL logs the losses every few hundred steps
                    log.scalars(global_step, losses_td_loss=loss.item(), losses_q_values=q.mean().item())
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(q_net.parameters(), 10.0)
                optimizer.step()
                with torch.no_grad():
                    for p, tp in zip(q_net.parameters(), target.parameters(), strict=True):
                        tp.lerp_(p, args.tau)
                    target.trunk.norm.load_state_dict(q_net.trunk.norm.state_dict())

        bar.update(args.num_envs)
        if global_step >= next_eval or global_step >= args.total_steps:
            next_eval += args.eval_every
            stats = validator(q_net.act, global_step)
            curve.append(stats)
            sps = global_step / (time.perf_counter() - start)
            log.scalars(
                global_step, charts_validation_return=stats["mean_return"], charts_SPS=sps, charts_epsilon=epsilon
            )
            if stats["mean_return"] > best["mean_return"]:  # validation seeds, never the held-out ones
                best = {"mean_return": stats["mean_return"], "env_steps": global_step}
                save_checkpoint(
                    out / "best.pt", **checkpoint_entries(q_net, env.history), global_step=global_step, best=best
                )
            bar.set_postfix(sps=f"{sps:,.0f}", epsilon=f"{epsilon:.2f}", eval=f"{stats['mean_return']:,.0f}")
    bar.close()
    wall = time.perf_counter() - start
    save_checkpoint(
        out / "checkpoint.pt",
        **checkpoint_entries(q_net, env.history),
        global_step=global_step,
        curve=curve,
        args=dataclasses.asdict(args),
    )
    print(f"trained {global_step:,} env steps in {wall:.0f} s; env.step took {100 * env_time / wall:.1f}% of it")
    best_net = model_from_checkpoint(torch.load(out / "best.pt", map_location=device, weights_only=True)).to(device)
    best_name = f"dqn_cnn (best: {best['env_steps']:,} steps)"
    results = final_report(
        {best_name: best_net.act, "dqn_cnn (final)": q_net.act},
        out,
        TrainingRun(curve, best, validator.references(), {"train_seconds": wall, "env_steps": global_step}),
        FinalEvaluation(args.final_eval_envs, score_episodes=args.score_episodes),
        device,
    )
    log.close()
    print((out / "eval.md").read_text())
    print(f"wrote {out / 'eval.md'}, {out / 'learning_curve.png'}, {out / 'episode.png'}")
    return run_results(out, best, curve, results)


if __name__ == "__main__":
    main(parse_args(Args, __doc__))
