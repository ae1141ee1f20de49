"""PPO with a 1D-CNN actor-critic over sensor windows, on the embedded simulator (the main job).

    python examples/ppo_cnn.py                       # defaults: about 5 min on a 2-core CPU (README)
    python examples/ppo_cnn.py --device cuda --num-envs 1024 --total-steps 5000000
    python examples/ppo_cnn.py --resume              # continue from <out>/checkpoint.pt
    torchrun --nproc-per-node 2 examples/ppo_cnn.py --distributed   # DDP, one env shard per rank

By default the CNN learns from scratch: it convolves the window's newest 10 rows (the training
envs keep just those: --history 10; validation and the final table play every policy, baselines
included, with 100-row windows: --eval-history), and the head also reads the player-side counters, as numbers in
units of 100 flights and one-hot (--counter-bins: since_repair in steps, repairs), with no plan
and no teacher, undiscounted (--gamma 1: the challenge scores the episode's plain sum).
`--recipe residual` is the best-score recipe: the head also reads the `belief` plan's action
(--plan-inputs) and the first half of training is kickstarted from `belief` (--teacher).
README, "The main job", measures each choice.

Writes to --out: checkpoint.pt, eval.md (trained policy vs every baseline on held-out seeds),
eval.json, learning_curve.png and episode.png. CleanRL's ppo.py layout: Args, then `main`'s setup and
one loop of rollout (`collect`), update (`advantages_and_returns`, `optimise`), logging
(`log_update`) and validation (`validation.Validator`), each a short function below or beside it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from flags import arg, check_counter_bins, parse_args
from report import FinalEvaluation, TrainingRun, final_report, verdict
from tensordict import TensorDict
from tqdm.auto import tqdm
from validation import Validator

from runs import RunLogger, run_dir, run_results, save_checkpoint
from torch_student_env import TorchStudentEnv, make_env
from torch_student_env.config import normalize_device
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.models import EXTRA_INPUTS_KEY, ActorCritic, checkpoint_entries, model_from_checkpoint
from torch_student_env.policies import BASELINES, make_policy
from torch_student_env.spec import FINAL_PLAYER_KEYS, FINAL_WINDOW_KEYS

# What each --recipe sets, where the flag it sets is left at its default.
RECIPES: dict[str, dict[str, object]] = {
    "scratch": {},  # the defaults: the window and the counters, no plan, no teacher (README, "Ablation")
    # reads the belief plan and is kickstarted from belief: the best score (README, "The main job")
    "residual": {
        "plan_inputs": True,
        "teacher": "belief",
        "counter_flights": 0,
        "counter_bins": 0,
        "gamma": 0.99,
        "history": 100,  # the plan is belief's, whose estimate reads every row of the window
        "cnn_channels": 32,  # as measured (README, "The main job")
        "num_envs": 64,  # the rollout it was measured with: 64 engines, 8 minibatches of 512
        "num_minibatches": 8,
        "total_steps": 3_600_000,  # it plays the plan from the first validation on: longer adds nothing
    },
}


@dataclasses.dataclass
class Args:
    recipe: str = arg(
        "scratch", f"a set of flags: {', '.join(RECIPES)} (residual: reads the belief plan, kickstarted from it)"
    )
    num_envs: int = arg(128, "parallel engines in the training env (a rollout is num_envs x num_steps)")
    total_steps: int = arg(5_400_000, "env steps to train for (one step = step_size flights of one engine)")
    device: str = arg("cpu", "torch device for the env, the model and the rollout storage")
    seed: int = arg(1, "seed of the training env and the model")
    out: str = arg("", "output folder (default: runs/TorchStudentEnv-v0__ppo_cnn__<seed>__<time>)")
    track: bool = arg(False, "also log to Weights & Biases (pip install wandb)")
    resume: bool = arg(False, "continue from <out>/checkpoint.pt")
    step_size: int = arg(10, "flights per env step")
    history: int = arg(10, "rows in each training env's window: what the network reads (residual: 100, for belief)")
    eval_history: int = arg(
        100, "rows in the windows of validation and the final table (at least --history): the baselines' memory"
    )
    cnn_rows: int = arg(10, "the CNN convolves the window's newest rows only (0: all): its cost grows with them")
    cnn_channels: int = arg(16, "channels of the CNN's two convolutions: most of the update's compute (residual: 32)")
    counter_flights: int = arg(
        100, "the head reads age and since_repair in units of this many flights (0: the flight limit)"
    )
    counter_bins: int = arg(16, "the head also reads since_repair (in steps) and repairs one-hot, N classes each")
    player_keys: bool = arg(True, "the CNN's head also reads since_repair and repairs (spec.PLAYER_KEYS)")
    belief_inputs: bool = arg(False, "the head also reads a player's estimate of health and wear rate")
    plan_inputs: bool = arg(False, "the head also reads the belief plan's action: PPO learns a correction to it")
    teacher: str = arg("", "kickstart from this baseline (policies.BASELINES; player-knowable ones only), '' for none")
    kickstart_coef: float = arg(1.0, "initial weight of the cross-entropy to the teacher's action")
    kickstart_fraction: float = arg(0.5, "share of the updates over which that weight anneals linearly to 0")
    fast: bool | None = arg(
        None, "compile the training env's step (default: make_env's, on for CPU; one-off ~30 s, then cached on disk)"
    )
    num_steps: int = arg(64, "rollout length per env between updates")
    learning_rate: float = arg(5e-4, "Adam learning rate (annealed linearly to 0)")
    gamma: float = arg(1.0, "discount per env step (the challenge's score is undiscounted)")
    gae_lambda: float = arg(0.95, "GAE lambda")
    num_minibatches: int = arg(16, "minibatches per epoch (128 x 64 / 16: 512 samples each)")
    update_epochs: int = arg(4, "epochs over each rollout")
    clip_coef: float = arg(0.2, "PPO clip range")
    ent_coef: float = arg(0.01, "entropy bonus")
    vf_coef: float = arg(0.5, "value loss weight")
    max_grad_norm: float = arg(0.5, "gradient clipping")
    reward_scale: float = arg(1e-3, "rewards are multiplied by this for learning (money units are large)")
    eval_every: int = arg(20, "updates between greedy evaluations")
    eval_envs: int = arg(256, "episodes per periodic evaluation (validation seed)")
    final_eval_envs: int = arg(1024, "held-out episodes for the final table")
    score_episodes: int = arg(SCORE_WINDOW, "the challenge score's window: the last K episodes of a stream on 4 envs")
    variant_eval: bool = arg(True, "the final table also gives each policy's worst plausible model (sim.variants)")
    checkpoint_every: int = arg(20, "updates between checkpoints")
    distributed: bool = arg(
        False, "under torchrun: DDP over the ranks (gloo on CPU, NCCL on CUDA), each stepping its own env shard"
    )


def setup_distributed(args: Args) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; (0, 1, --device) without --distributed.

    Under torchrun each rank runs on its own device (`cuda:LOCAL_RANK` when --device is CUDA)
    and steps engines `rank * num_envs ...` of one env (`make_env(env_offset=...)`), so the
    ranks together step the same engines as one process with `world_size * num_envs` envs.
    """
    device = normalize_device(args.device)  # "cuda" -> "cuda:0", "cpu:0" -> "cpu"
    if not args.distributed:
        return 0, 1, device
    if "RANK" not in os.environ:
        raise SystemExit(
            "--distributed runs under torchrun: torchrun --nproc-per-node K examples/ppo_cnn.py --distributed"
        )
    if device.type == "cuda":
        device = normalize_device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def ddp(agent: torch.nn.Module) -> torch.nn.Module:
    """`agent` under DistributedDataParallel, without the per-forward buffer broadcast (the
    normalisation statistics are kept identical by `gather_envs`; the initial ones already are)."""
    import inspect

    ddp_class = torch.nn.parallel.DistributedDataParallel
    newer = "forward_sync_buffers" in inspect.signature(ddp_class).parameters  # torch >= 2.13 renamed it
    return ddp_class(agent, **({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}))


def gather_envs(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """All ranks' `tensor`s (envs on dim 0) concatenated in rank order: the same on every rank."""
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def with_recipe(args: Args) -> Args:
    """`args` with its recipe's settings applied to the flags still at their defaults."""
    if args.recipe not in RECIPES:
        raise SystemExit(f"--recipe must be one of {list(RECIPES)}, got {args.recipe!r}")
    defaults = Args()
    chosen = {k: v for k, v in RECIPES[args.recipe].items() if getattr(args, k) == getattr(defaults, k)}
    return dataclasses.replace(args, **chosen)


def main(args: Args) -> dict | None:
    args = with_recipe(args)
    check_inputs(args)
    check_teacher(args.teacher)
    rank, world, device = setup_distributed(args)
    lead = rank == 0  # evaluation, checkpoints, logs and plots happen on rank 0 only
    if args.resume and not args.out:
        raise SystemExit("--resume continues a run: pass its folder with --out")
    out = run_dir(args.out, "ppo_cnn", args.seed)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLogger(out, dataclasses.asdict(args), args.track) if lead else None
    env = make_train_env(args, device, rank)
    first_td = env.reset()  # a cold cache's build starts here, while the validator plays its baselines
    validator = Validator(args.eval_envs, device, eval_window(args)) if lead else None  # plays the baselines once
    torch.manual_seed(args.seed)  # the same on every rank: identical initial weights
    batch_size = args.num_envs * args.num_steps
    num_updates = max(1, args.total_steps // (batch_size * world))  # --total-steps counts all ranks

    agent = make_agent(args, env, device)
    # DDP averages gradients across ranks in backward. The normalisation statistics are buffers
    # that every rank updates from all ranks' rows (gather_envs), so they need no broadcast.
    learner = agent if world == 1 else ddp(agent)
    optimizer = make_optimizer(args, agent)
    teacher = make_policy(args.teacher, env) if args.teacher else None
    kickstart_updates = args.kickstart_fraction * num_updates if teacher is not None else 0.0
    rollout, td = new_rollout(first_td, agent, args.num_steps)

    run = {
        "update": 0,
        "global_step": 0,
        "curve": [],
        "best": {"mean_return": float("-inf"), "env_steps": 0, "update": 0},
    }
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    if args.resume:
        run, td = resume(ckpt_path, env, agent, optimizer, world, rank, device)
        if lead:
            print(f"resumed from {ckpt_path} at update {run['update']}, {run['global_step']:,} env steps")
    start_update, global_step, curve, best = run["update"] + 1, run["global_step"], run["curve"], run["best"]
    next_done = torch.zeros(args.num_envs, device=device)
    collector = Collector(env, agent, teacher, world, returns=torch.zeros(2, device=device))
    returns, start = collector.returns, time.perf_counter()  # episodes' returns and count since the last log
    bar = tqdm(
        total=num_updates * batch_size * world, initial=global_step, unit="step", desc="ppo_cnn", disable=not lead
    )
    keep_first_rollout = args.distributed and not args.resume  # for the shard check (first_rollout.pt)

    for update in range(start_update, num_updates + 1):
        optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - (update - 1.0) / num_updates)
        # Kickstarting (Schmitt et al. 2018, arXiv:1803.03835): a cross-entropy to the teacher's
        # action on the student's own states, annealed to 0, so PPO starts from the teacher's plan
        # with a critic trained alongside, and then improves on it from the reward alone.
        kick = args.kickstart_coef * max(0.0, 1.0 - (update - 1.0) / kickstart_updates) if kickstart_updates else 0.0
        raw_rewards = torch.zeros_like(rollout.rewards) if keep_first_rollout and update == start_update else None
        td, next_done = collect(args, collector, rollout, td, next_done, kick, raw_rewards)
        global_step += args.num_steps * args.num_envs * world
        advantages, b_returns = advantages_and_returns(args, agent, rollout, td, next_done)
        losses = optimise(args, agent, learner, optimizer, rollout, advantages, b_returns, kick)
        if raw_rewards is not None:
            save_first_rollout(out, world, rank, rollout.storage, rollout.actions, raw_rewards)

        # LOGGING: a few host reads per update, never per step
        if world > 1:
            dist.all_reduce(returns)
        episodes_done, mean_return = returns[1].item(), (returns[0] / returns[1].clamp(min=1)).item()
        returns.zero_()
        sps = (global_step - (start_update - 1) * batch_size * world) / (time.perf_counter() - start)
        bar.update(batch_size * world)
        last_eval = f"{curve[-1]['mean_return']:,.0f}" if curve else "-"
        bar.set_postfix(sps=f"{sps:,.0f}", train_return=f"{mean_return:,.0f}", eval=last_eval)
        if log is not None:
            log_update(log, global_step, optimizer, sps, losses, kick, mean_return if episodes_done else None)
        # the first update too: the curve starts where learning starts, near the random policy
        if lead and (update % args.eval_every == 0 or update in (1, num_updates)):
            stats = validator(agent.act, global_step)
            curve.append(stats)
            log.scalars(global_step, charts_validation_return=stats["mean_return"])
            log.scalars(global_step, charts_validation_minus_belief=stats["paired_diff"])
            if stats["mean_return"] > best["mean_return"]:  # validation seeds, never the held-out ones
                best = {"mean_return": stats["mean_return"], "env_steps": global_step, "update": update}
                save_checkpoint(
                    best_path, **checkpoint_entries(agent, eval_window(args)), global_step=global_step, best=best
                )
            bar.set_postfix(sps=f"{sps:,.0f}", train_return=f"{mean_return:,.0f}", eval=f"{stats['mean_return']:,.0f}")
        if update % args.checkpoint_every == 0 or update == num_updates:
            envs = gather_env_states(env, world)
            if lead:
                state = {"update": update, "global_step": global_step, "curve": curve, "best": best, "envs": envs}
                weights = checkpoint_entries(agent, eval_window(args)) | {"optimizer": optimizer.state_dict()}
                save_checkpoint(ckpt_path, **weights, **state, args=dataclasses.asdict(args))
    bar.close()
    wall = time.perf_counter() - start
    if world > 1 and not ranks_agree(agent, world, lead):
        return None  # a rank other than 0: its work is done
    first_step_time = collector.first or 0.0
    steady_share = collector.rest / max(wall - first_step_time, 1e-9)
    print(
        f"trained {global_step:,} env steps in {wall:.0f} s; env.step took {100 * steady_share:.1f}% of it "
        f"after its first call, which took {first_step_time:.1f} s (the one-off compile with --fast)"
    )
    extra = {"train_seconds": wall, "env_step_share": steady_share, "env_first_step_seconds": first_step_time}
    extra |= {"env_steps": global_step, "world_size": world}
    results = evaluate_run(args, agent, best, curve, out, device, extra | {"validation": validator.references()})
    log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_results(out, best, curve, results)


def eval_window(args: Args) -> int:
    """The window every policy plays with in validation, the final table and the checkpoint (what
    `evaluate` replays): the baselines' memory, --eval-history. A network that reads only the
    newest --cnn-rows rows of its training window plays the same on any longer one, so it trains
    on the shortest; one that reads more (the whole window, belief's estimate) plays with its own."""
    reads_only_newest = 0 < args.cnn_rows <= args.history and not (args.plan_inputs or args.belief_inputs)
    return max(args.history, args.eval_history) if reads_only_newest else args.history


def make_train_env(args: Args, device: torch.device, rank: int = 0) -> TorchStudentEnv:
    """The training env: `num_envs` engines of this rank's shard (`env_offset`), fast, unvalidated."""
    return make_env(
        num_envs=args.num_envs,
        step_size=args.step_size,
        history=args.history,
        device=device,
        seed=args.seed,
        fast=args.fast,
        env_offset=rank * args.num_envs,
        validate_actions=False,  # sampled from the policy's 3 logits: always valid, and no sync on GPU
        # The first step waits for the compiled step if it is still building (a cold cache): eager
        # and compiled steps agree to float rounding, not bit for bit, so a run replays exactly
        # from its seed only if it steps one way from the start.
        wait_compiled=True,
    )


def make_agent(args: Args, env: TorchStudentEnv, device: torch.device) -> ActorCritic:
    """The 1D-CNN actor-critic the flags describe, on `device`."""
    return ActorCritic(
        max_flights=env.config.max_steps_per_episode,
        player_keys=args.player_keys,
        belief_inputs=args.belief_inputs,
        plan_inputs=args.plan_inputs,
        step_size=args.step_size,
        cnn_rows=args.cnn_rows,
        channels=args.cnn_channels,
        counter_flights=args.counter_flights,
        counter_bins=args.counter_bins,
    ).to(device)


def make_optimizer(args: Args, agent: torch.nn.Module) -> torch.optim.Adam:
    """PPO's Adam. Fused where torch has it (CPU since torch 2.4): one kernel updates every
    parameter, where the default runs a dozen small ops per parameter, 32 times an update."""
    settings = {"lr": args.learning_rate, "eps": 1e-5}
    try:
        return torch.optim.Adam(agent.parameters(), **settings, fused=True)
    except RuntimeError:  # an older torch, or a device without a fused Adam
        return torch.optim.Adam(agent.parameters(), **settings)


@dataclasses.dataclass
class Rollout:
    """One rollout's storage, preallocated on the env's device: (num_steps, N, ...) each."""

    obs_keys: tuple[str, ...]
    storage: TensorDict  # the states acted on
    final_storage: TensorDict  # terminal windows, read only where an episode was truncated (GAE)
    truncateds: torch.Tensor
    actions: torch.Tensor
    teacher_actions: torch.Tensor  # the teacher's action at each stored state
    logprobs: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    values: torch.Tensor


def new_rollout(td: TensorDict, agent: ActorCritic, num_steps: int) -> tuple[Rollout, TensorDict]:
    """Storage for rollouts of `num_steps` from states like `td`, and `td` with the head's inputs."""
    obs_keys = ("observation", "valid", "flight", "age", "since_repair", "repairs")
    final_storage = rollout_buffer(td, obs_keys, num_steps)
    # The head's belief and plan inputs are a pure function of a stored state: computed once per
    # state in the rollout and stored, not again in each of the update epochs.
    if agent.extra_inputs(td) is not None:
        obs_keys += (EXTRA_INPUTS_KEY,)
        td[EXTRA_INPUTS_KEY] = agent.extra_inputs(td)
    n, device = td.batch_size[0], td.device
    actions = torch.zeros((num_steps, n), dtype=torch.int64, device=device)
    logprobs = torch.zeros((num_steps, n), device=device)
    rollout = Rollout(
        obs_keys=obs_keys,
        storage=rollout_buffer(td, obs_keys, num_steps),
        final_storage=final_storage,
        truncateds=torch.zeros((num_steps, n), dtype=torch.bool, device=device),
        actions=actions,
        teacher_actions=torch.zeros_like(actions),
        logprobs=logprobs,
        rewards=torch.zeros_like(logprobs),
        dones=torch.zeros_like(logprobs),
        values=torch.zeros_like(logprobs),
    )
    return rollout, td


@dataclasses.dataclass
class Collector:
    """What every rollout uses: the env, the agent, the kickstarting teacher (or None), the number
    of ranks, the finished episodes' returns and count since the last log, and the wall time
    inside `env.step` (the first call, which may wait for the compiled step, apart from the rest)."""

    env: TorchStudentEnv
    agent: ActorCritic
    teacher: Callable[[TensorDict], torch.Tensor] | None
    world: int
    returns: torch.Tensor
    first: float | None = None
    rest: float = 0.0

    def step(self, action: torch.Tensor) -> TensorDict:
        start = time.perf_counter()
        td = self.env.step(action)
        if self.first is None:
            self.first = time.perf_counter() - start
        else:
            self.rest += time.perf_counter() - start
        return td


def collect(args, collector, rollout, td, next_done, kick, raw_rewards):
    """One rollout of `num_steps` into `rollout`; adds the finished episodes' returns and count to
    `collector.returns`, and the raw rewards to `raw_rewards` when given. Returns the next state
    and dones."""
    agent, teacher, world, returns = collector.agent, collector.teacher, collector.world, collector.returns
    # the storage's columns, written in place: cheaper than a TensorDict's indexed assignment
    columns = [(rollout.storage[key], key) for key in rollout.obs_keys]
    finals = [(rollout.final_storage[key], final) for key, final in (FINAL_WINDOW_KEYS | FINAL_PLAYER_KEYS).items()]
    for step in range(args.num_steps):
        if EXTRA_INPUTS_KEY in rollout.obs_keys:
            td[EXTRA_INPUTS_KEY] = agent.extra_inputs(td)
        for column, key in columns:
            column[step] = td[key]
        rollout.dones[step] = next_done
        with torch.inference_mode():
            agent.trunk.norm.update(gather_envs(td["observation"], world), gather_envs(td["valid"], world))
            action, logprob, _, value = agent.get_action_and_value(td)
            if kick > 0:
                rollout.teacher_actions[step] = teacher(td)
        rollout.values[step], rollout.actions[step], rollout.logprobs[step] = value, action, logprob
        td = collector.step(action)
        rollout.rewards[step] = td["reward"] * args.reward_scale
        if raw_rewards is not None:
            raw_rewards[step] = td["reward"]
        # CRUCIAL, easy to overlook: a truncated episode did not end, its value continues.
        # Keep the window it ended with (final_observation, not the reset window) to bootstrap.
        for column, final_key in finals:  # the window and counters it ended with
            column[step] = td[final_key]
        rollout.truncateds[step] = td["truncated"]
        next_done = td["done"].to(torch.float32)
        returns[0] += td["episode_return"].sum()
        returns[1] += td["done"].sum()
    return td, next_done


@torch.no_grad()
def advantages_and_returns(args, agent, rollout, td, next_done) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the rollout, truncated episodes bootstrapped from their terminal windows."""
    # Truncations are rare: value only their terminal windows, in one batched call per update
    # (one host read, like the logging) instead of a critic pass every step.
    if rollout.truncateds.any():
        rollout.rewards[rollout.truncateds] += args.gamma * agent.get_value(rollout.final_storage[rollout.truncateds])
    next_value = agent.get_value(td)
    values, dones = rollout.values, rollout.dones
    advantages = torch.zeros_like(rollout.rewards)
    lastgaelam = torch.zeros(args.num_envs, device=td.device)
    for t in reversed(range(args.num_steps)):
        if t == args.num_steps - 1:
            nextnonterminal, nextvalues = 1.0 - next_done, next_value
        else:
            nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
        delta = rollout.rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
        lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
        advantages[t] = lastgaelam
    return advantages, advantages + values


def optimise(args, agent, learner, optimizer, rollout, advantages, returns, kick) -> dict[str, torch.Tensor]:
    """PPO's clipped policy and value optimisation over the rollout; the last minibatch's losses."""
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    # the trunk's inputs, prepared once for all epochs (the normalisation is fixed during an update)
    b_inputs = agent.inputs(rollout.storage.reshape(-1))
    b_actions, b_logprobs = rollout.actions.reshape(-1), rollout.logprobs.reshape(-1)
    b_teacher = rollout.teacher_actions.reshape(-1)
    b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), rollout.values.reshape(-1)
    clipfracs = []
    for _ in range(args.update_epochs):
        order = torch.randperm(batch_size, device=advantages.device)
        for begin in range(0, batch_size, minibatch_size):
            mb = order[begin : begin + minibatch_size]
            newlogprob, entropy, newvalue, teacher_logprob = learner(
                tuple(t[mb] for t in b_inputs), b_actions[mb], b_teacher[mb] if kick > 0 else None
            )
            logratio = newlogprob - b_logprobs[mb]
            ratio = logratio.exp()
            with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())
            mb_adv, mb_values, mb_returns = b_advantages[mb], b_values[mb], b_returns[mb]
            mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
            v_clipped = mb_values + (newvalue - mb_values).clamp(-args.clip_coef, args.clip_coef)
            v_loss = 0.5 * torch.max((newvalue - mb_returns) ** 2, (v_clipped - mb_returns) ** 2).mean()
            kick_loss = -teacher_logprob.mean()
            loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss + kick * kick_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
    variance = b_returns.var()
    explained = 1 - (b_returns - b_values).var() / variance if variance > 0 else torch.tensor(float("nan"))
    return {
        "value_loss": v_loss,
        "policy_loss": pg_loss,
        "entropy": entropy.mean(),
        "old_approx_kl": old_approx_kl,
        "approx_kl": approx_kl,
        "clipfrac": torch.stack(clipfracs).mean(),
        "explained_variance": explained,
        "kickstart": kick_loss,
    }


def log_update(log, global_step, optimizer, sps, losses, kick, mean_return) -> None:
    """The update's scalars, CleanRL's names: charts/* and losses/*."""
    kickstart = losses.pop("kickstart")
    log.scalars(
        global_step,
        charts_learning_rate=optimizer.param_groups[0]["lr"],
        charts_SPS=sps,
        **{f"losses_{name}": value.item() for name, value in losses.items()},
    )
    if kick > 0:
        log.scalars(global_step, losses_kickstart=kickstart.item(), charts_kickstart_coef=kick)
    if mean_return is not None:
        log.scalars(global_step, charts_episodic_return=mean_return)


def resume(ckpt_path, env, agent, optimizer, world, rank, device) -> tuple[dict, TensorDict]:
    """Restore a run from its checkpoint: the model, the optimizer, this rank's env shard, the
    counters and curve; the current observation."""
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
    agent.load_state_dict(ckpt["agent"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if len(ckpt["envs"]) != world:
        raise SystemExit(f"{ckpt_path} holds {len(ckpt['envs'])} env shards; resume it with {len(ckpt['envs'])} ranks")
    env.load_state_dict(ckpt["envs"][rank])
    td = env.reset(mask=torch.zeros(env.num_envs, dtype=torch.bool, device=device))  # current obs
    run = {k: ckpt[k] for k in ("update", "global_step", "curve", "best")}
    return run, td


def gather_env_states(env, world: int) -> list:
    """Every rank's env `state_dict`, in rank order (a checkpoint holds all the shards)."""
    if world == 1:
        return [env.state_dict()]
    envs = [None] * world
    dist.all_gather_object(envs, env.state_dict())
    return envs


def ranks_agree(agent, world: int, lead: bool) -> bool:
    """Check that every rank ends with the same parameters and statistics (rank 0 prints it);
    False on the other ranks, after they wait for rank 0's evaluation and leave the group."""
    flat = torch.cat([p.detach().reshape(-1) for p in agent.state_dict().values() if p.is_floating_point()])
    ranks = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(ranks, flat)
    identical = all(torch.equal(ranks[0], r) for r in ranks)
    if lead:
        print(f"ranks' parameters and statistics identical: {identical} ({world} ranks, {flat.numel():,} values)")
        return True
    dist.barrier()  # wait for rank 0's evaluation, then leave together: no rank exits mid-run
    dist.destroy_process_group()
    return False


def evaluate_run(args, agent, best, curve, out, device, extra) -> dict:
    """The best checkpoint (by validation return) and the final policy against every baseline on
    held-out seeds (10,000; validation uses 5,000): the report, its files and the verdict."""
    best_path = out / "best.pt"
    best_agent = model_from_checkpoint(torch.load(best_path, map_location=device, weights_only=True)).to(device)
    best_name = f"ppo_cnn (best: {best['env_steps']:,} steps)"
    results = final_report(
        {best_name: best_agent.act, "ppo_cnn (final)": agent.act},
        out,
        TrainingRun(curve, best, references=extra["validation"], extra=extra),
        FinalEvaluation(
            args.final_eval_envs,
            variants=args.variant_eval,
            history=eval_window(args),
            score_episodes=args.score_episodes,
        ),
        device,
    )
    print((out / "eval.md").read_text())
    print(f"wrote {out / 'eval.md'}, {out / 'learning_curve.png'}, {out / 'episode.png'}, {out / 'checkpoint.pt'}")
    print(verdict(best_name, results))
    return results


def rollout_buffer(td: TensorDict, keys: tuple[str, ...], num_steps: int) -> TensorDict:
    """Zeros for `num_steps` of `td`'s `keys`, on its device: (num_steps, N, ...) per key."""
    return TensorDict(
        {k: torch.zeros((num_steps,) + td[k].shape, dtype=td[k].dtype, device=td.device) for k in keys},
        batch_size=[num_steps, *td.batch_size],
        device=td.device,
    )


def check_inputs(args: Args) -> None:
    """Refuse, before anything is built, inputs that need what the flags turned off."""
    for flag, on in (("--plan-inputs", args.plan_inputs), ("--belief-inputs", args.belief_inputs)):
        if on and not args.player_keys:
            raise SystemExit(f"{flag} reads the player-side counters: drop --no-player-keys, or add --no-{flag[2:]}")
    check_counter_bins(args.counter_bins, args.player_keys)
    batch = args.num_envs * args.num_steps
    if not 1 <= args.num_minibatches <= batch:
        raise SystemExit(
            f"--num-minibatches must be in [1, {batch}] (--num-envs x --num-steps samples), got {args.num_minibatches}"
        )


def check_teacher(name: str) -> None:
    """Refuse, before anything is built, a teacher a player cannot have or that does not exist."""
    if name and name not in BASELINES:
        raise SystemExit(f"--teacher: unknown policy {name!r}; baselines are {list(BASELINES)}")
    if name and BASELINES[name].reads_hidden_state:
        raise SystemExit(f"--teacher {name} reads the hidden state, which a player cannot; use belief or a rule")


def save_first_rollout(out: Path, world: int, rank: int, storage, actions, rewards) -> None:
    """Rank 0 writes every rank's first rollout, envs concatenated in rank order (first_rollout.pt):
    replayed on one env of world * num_envs engines, the same actions must give the same rows."""
    gathered = {
        "observation": gather_envs(storage["observation"].transpose(0, 1), world).transpose(0, 1),
        "action": gather_envs(actions.T, world).T,
        "reward": gather_envs(rewards.T, world).T,
    }
    if rank == 0:
        torch.save({k: v.cpu() for k, v in gathered.items()}, out / "first_rollout.pt")


if __name__ == "__main__":
    main(parse_args(Args, __doc__))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank: its outputs are written and its process group destroyed. Interpreter
        # finalization can hang it now and then (1 run in 7 here): torch's native threads race the
        # GIL teardown (pytorch/pytorch#190489, #179291). Nothing is left to run, so skip it.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
