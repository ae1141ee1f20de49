"""The leaderboard page in a headless browser at a laptop's window size: a screenshot, and whether
it needs a horizontal scrollbar.

    python scripts/leaderboard_screenshot.py                      # 1,100 x 700, docs/img/leaderboard.png
    python scripts/leaderboard_screenshot.py --size 1280x800 --out board.png

Renders `server.page.leaderboard_page` with eight players (one with a very long name) and
prints the page's scroll width against the window's; exits 1 if the table does not fit. Needs
Chromium (`apt-get install chromium`); the page itself needs nothing but the standard library.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torch_student_env.server.page import leaderboard_page

NAMES = ("Ada Lovelace", "team turbofan", "Grace Hopper and the very long team name of the evening class",
         "player 4", "Claude Shannon", "Édith Piaf", "R2", "Quentin")  # fmt: skip


def sample_page(seed: int = 1) -> str:
    """The page with eight made-up players, the widest figures the metrics take."""
    rng = random.Random(seed)
    scores = [
        (name, {"total_reward": rng.uniform(100_000, 480_000), "avg_reward": rng.uniform(1000, 4800),
                "best_reward": rng.uniform(5000, 9000), "total_maintenance": rng.randint(100, 900),
                "avg_steps": rng.uniform(150, 320), "failure_rate": rng.uniform(0, 0.2),
                "total_episodes": rng.randint(40, 1000), "last_episode_date": "2026-12-04T21:30:05+00:00"})
        for name in NAMES
    ]  # fmt: skip
    return leaderboard_page(scores, 100)


def browser() -> str | None:
    """The Chromium binary on PATH, if any."""
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def measure(page: str, width: int, height: int, out: Path | None) -> int:
    """The page's scroll width in a `width` x `height` window (and a screenshot to `out`)."""
    binary = browser()
    if binary is None:
        raise SystemExit("no Chromium on PATH: apt-get install chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"]
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.html"
        # the page's own title is replaced by its scroll width once laid out, read back from the DOM
        script = (
            "<script>addEventListener('load', () => "
            "{ document.title = 'W' + document.documentElement.scrollWidth; });</script>"
        )
        probe.write_text(page.replace("</body>", script + "</body>"))
        dom = subprocess.run([binary, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=60)
        found = re.search(r"<title>W(\d+)</title>", dom.stdout)
        if found is None:
            raise SystemExit(f"the browser gave no measurement: {dom.stderr[-500:]}")
        if out is not None:
            page_file = Path(folder) / "page.html"
            page_file.write_text(page)
            subprocess.run([binary, *flags, f"--screenshot={out}", page_file.as_uri()], capture_output=True, timeout=60)
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1100x700", help="window WIDTHxHEIGHT")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img" / "leaderboard.png"
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    scroll = measure(sample_page(), width, height, args.out)
    fits = scroll <= width
    verdict = "fits" if fits else "needs a horizontal scrollbar"
    print(f"window {width} x {height}: page scroll width {scroll} px: {verdict}")
    print(f"screenshot: {args.out}")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
