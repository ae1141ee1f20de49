"""Command line: `python -m torch_student_env.server` / `torch-student-env-serve`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from torch_student_env.server.config import Limits

_LIMIT_HELP = {
    "session_ttl_s": "idle seconds before a session expires",
    "max_body_bytes": "the largest request body, in bytes",
    "scored_episodes_per_token": "finished episodes kept per token for the leaderboard",
}


def main(argv: list[str] | None = None) -> None:
    """Serve the embedded simulator over the challenge protocol until interrupted."""
    parser = argparse.ArgumentParser(description="Reference server of the challenge protocol (embedded simulator).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokens-file", help="one token per line; else $STUDENT_ENV_TOKENS; else 'student_user'")
    for field in fields(Limits):  # every limit, named as in `Limits` (session_ttl_s also as --session-ttl)
        names = (["--session-ttl"] if field.name == "session_ttl_s" else []) + [f"--{field.name.replace('_', '-')}"]
        kind = float if isinstance(field.default, float) else int
        parser.add_argument(*names, dest=field.name, type=kind, default=field.default, help=_LIMIT_HELP.get(field.name))
    parser.add_argument("--hide-health", action="store_true", help="never send hidden health in infos")
    parser.add_argument(
        "--db",
        default="scores.sqlite",
        help="SQLite file of finished episodes and display names (default: ./scores.sqlite; ':memory:' keeps none)",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fsync every commit: scores survive a power cut too, not only a crash of the server (slower)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: a 4-engine step has nothing to split, and requests run in parallel)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: a line per step costs about 6 %% of a step's CPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="serve a class: nginx on --host:--port in front of N server processes, routed by token "
        "(needs nginx and a --db file; default 0: this one process)",
    )
    parser.add_argument(
        "--run-dir",
        help="with --workers: folder of nginx's config, the sockets and logs (default: a new temporary one)",
    )
    parser.add_argument("--uds", help=argparse.SUPPRESS)  # a worker of --workers: serve on this Unix socket
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.workers:
        _serve_class(args)
        return
    import torch

    torch.set_num_threads(args.threads)

    import uvicorn

    from torch_student_env.server.app import create_app
    from torch_student_env.server.config import load_tokens
    from torch_student_env.server.store import StoreError

    try:
        limits = Limits(**{field.name: getattr(args, field.name) for field in fields(Limits)})
        tokens = load_tokens(args.tokens_file)
        app = create_app(tokens, limits, expose_health=not args.hide_health, db=args.db, durable=args.durable)
    except (StoreError, ValueError) as err:  # a limit out of range, a tokens file without a token
        raise SystemExit(f"error: {err}") from None
    app.state.server.warm_up()  # the compiled step loaded, or its build started, before the port opens
    where = {"uds": args.uds} if args.uds else {"host": args.host, "port": args.port}
    uvicorn.run(app, **where, log_level="info", access_log=args.access_log)


def _serve_class(args: argparse.Namespace) -> None:
    """`--workers N`: the front (`server.front`), its workers run with this command's options."""
    from pathlib import Path

    from torch_student_env.server.front import Front, run_front

    if args.db == ":memory:":
        raise SystemExit("error: --workers needs a --db file, which every worker shares (':memory:' is one process's)")
    worker_args = ["--db", str(Path(args.db).resolve()), "--threads", str(args.threads)]
    for field in fields(Limits):
        worker_args += [f"--{field.name.replace('_', '-')}", str(getattr(args, field.name))]
    if args.tokens_file:
        worker_args += ["--tokens-file", str(Path(args.tokens_file).resolve())]
    worker_args += [flag for flag, on in (("--hide-health", args.hide_health), ("--durable", args.durable),
                                           ("--access-log", args.access_log)) if on]  # fmt: skip
    run_dir = Path(args.run_dir) if args.run_dir else None
    front = Front(args.host, args.port, args.workers, worker_args, args.max_body_bytes, run_dir)
    raise SystemExit(run_front(front))


if __name__ == "__main__":
    main()
