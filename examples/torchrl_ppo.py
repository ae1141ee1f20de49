"""PPO through TorchRL: `Collector`, `GAE` and `ClipPPOLoss` on the TorchRL adapter, same CNN trunk.

    python examples/torchrl_ppo.py                    # ~2 min on a 2-core CPU
    python examples/torchrl_ppo.py --device cuda --num-envs 1024 --total-steps 5000000

Needs the [torchrl] and [examples] extras. Writes eval.md, eval.json, learning_curve.png,
episode.png and checkpoint.pt to --out, like examples/ppo_cnn.py.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from flags import arg, parse_args
from report import FinalEvaluation, TrainingRun, final_report
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector  # noqa: E402  (after our import, which names the extra)
from torchrl.envs import RewardScaling, TransformedEnv  # noqa: E402
from torchrl.modules import ProbabilisticActor, ValueOperator  # noqa: E402
from torchrl.objectives import ClipPPOLoss  # noqa: E402
from torchrl.objectives.value import GAE  # noqa: E402
from tqdm.auto import tqdm
from validation import Validator

from runs import save_checkpoint
from torch_student_env.adapters.torchrl import TorchRLStudentEnv
from torch_student_env.config import normalize_device
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.models import SensorCNN
from torch_student_env.spec import NUM_ACTIONS

IN_KEYS = ["observation", "valid", "flight"]


@dataclasses.dataclass
class Args:
    num_envs: int = arg(64, "parallel engines (the TorchRL env's batch size)")
    total_steps: int = arg(600_000, "env steps to collect")
    device: str = arg("cpu", "torch device")
    seed: int = arg(1, "seed of the env and the model")
    out: str = arg("runs/torchrl_ppo", "output folder")
    frames_per_env: int = arg(64, "rollout length per env per batch")
    learning_rate: float = arg(5e-4, "Adam learning rate")
    gamma: float = arg(0.99, "discount per env step")
    gae_lambda: float = arg(0.95, "GAE lambda")
    epochs: int = arg(4, "epochs per batch")
    minibatch_size: int = arg(512, "transitions per minibatch")
    clip_epsilon: float = arg(0.2, "PPO clip range")
    entropy_coef: float = arg(0.01, "entropy bonus")
    reward_scale: float = arg(1e-3, "reward multiplier for learning")
    eval_every: int = arg(20, "batches between greedy evaluations")
    final_eval_envs: int = arg(1024, "held-out episodes for the final table")
    score_episodes: int = arg(SCORE_WINDOW, "the challenge score's window: the last K episodes of a stream on 4 envs")


class Head(nn.Module):
    """The shared `SensorCNN` trunk with a linear head: (obs, valid, flight) -> outputs."""

    def __init__(self, trunk: SensorCNN, out: int, max_flights: int) -> None:
        super().__init__()
        self.trunk, self.linear, self.max_flights = trunk, nn.Linear(trunk.out_features, out), max_flights

    def forward(self, observation, valid, flight):
        return self.linear(self.trunk(observation, valid, (flight[..., -1].float() / self.max_flights).unsqueeze(-1)))


def main(args: Args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = normalize_device(args.device)  # "cuda" -> "cuda:0", "cpu:0" -> "cpu"
    torch.manual_seed(args.seed)
    base = TorchRLStudentEnv(num_envs=args.num_envs, seed=args.seed, device=device)
    max_flights = base.env.config.max_steps_per_episode
    env = TransformedEnv(base, RewardScaling(loc=0.0, scale=args.reward_scale))

    trunk = SensorCNN().to(device)
    logits = TensorDictModule(Head(trunk, NUM_ACTIONS, max_flights), in_keys=IN_KEYS, out_keys=["logits"])
    actor = ProbabilisticActor(
        logits,
        in_keys=["logits"],
        spec=base.action_spec,
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    ).to(device)
    critic = ValueOperator(Head(trunk, 1, max_flights), in_keys=IN_KEYS).to(device)
    advantage = GAE(gamma=args.gamma, lmbda=args.gae_lambda, value_network=critic, average_gae=True)
    loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=args.clip_epsilon, entropy_coeff=args.entropy_coef)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=args.learning_rate)

    frames_per_batch = args.num_envs * args.frames_per_env
    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=args.total_steps, device=device)

    def greedy(td):
        return logits(td.select(*IN_KEYS))["logits"].argmax(-1)

    validator = Validator(256, device)  # plays the baselines on the validation engines once
    curve, steps, start = [], 0, time.perf_counter()
    bar = tqdm(total=args.total_steps, unit="step", desc="torchrl_ppo", dynamic_ncols=True)
    for i, batch in enumerate(collector):
        trunk.norm.update(batch["observation"], batch["valid"])
        steps += batch.numel()
        for _ in range(args.epochs):
            with torch.no_grad():
                advantage(batch)
            flat = batch.reshape(-1)
            for idx in torch.randperm(flat.numel(), device=device).split(args.minibatch_size):
                losses = loss_fn(flat[idx])
                loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(loss_fn.parameters(), 0.5)
                optimizer.step()
        collector.update_policy_weights_()
        bar.update(batch.numel())
        if (i + 1) % args.eval_every == 0 or steps >= args.total_steps:
            stats = validator(greedy, steps)
            curve.append(stats)
            bar.set_postfix(sps=f"{steps / (time.perf_counter() - start):,.0f}", eval=f"{stats['mean_return']:,.0f}")
    collector.shutdown()
    bar.close()
    wall = time.perf_counter() - start
    save_checkpoint(
        out / "checkpoint.pt",
        actor=actor.state_dict(),
        critic=critic.state_dict(),
        global_step=steps,
        curve=curve,
        args=dataclasses.asdict(args),
    )
    print(f"trained {steps:,} env steps in {wall:.0f} s")
    final_report(
        {"torchrl_ppo": greedy},
        out,
        TrainingRun(curve, references=validator.references(), extra={"train_seconds": wall, "env_steps": steps}),
        FinalEvaluation(args.final_eval_envs, score_episodes=args.score_episodes),
        device,
    )
    print((out / "eval.md").read_text())


if __name__ == "__main__":
    main(parse_args(Args, __doc__))
