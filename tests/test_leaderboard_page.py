"""The leaderboard page: ranked, escaped, self-refreshing, and whole in a 1,100 x 700 window."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from torch_student_env.server.page import REFRESH_S, leaderboard_page

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "leaderboard_screenshot.py"


def _metrics(total: float) -> dict:
    return {"total_reward": total, "avg_reward": total / 100, "best_reward": 1.0, "total_maintenance": 3,
            "avg_steps": 250.0, "failure_rate": 0.05, "total_episodes": 100,
            "last_episode_date": "2026-12-04T21:30:05+00:00"}  # fmt: skip


def test_ranked_by_total_escaped_and_refreshing():
    page = leaderboard_page([("low", _metrics(10.0)), ("<b>high</b>", _metrics(300.0))], 100)
    assert page.index("&lt;b&gt;high&lt;/b&gt;") < page.index(">low<") and "<b>high" not in page
    assert f'<meta http-equiv="refresh" content="{REFRESH_S}">' in page and REFRESH_S == 30
    assert "2026-12-04 21:30<" in page  # to the minute, the column's width


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("leaderboard_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a subprocess or a browser
def test_the_page_fits_a_laptop_window_in_a_real_browser(tmp_path):
    """Chromium lays the page out at 1,100 x 700: no horizontal scrollbar (skipped without it)."""
    module = _screenshot_module()
    if module.browser() is None:
        pytest.skip("needs Chromium (apt-get install chromium)")
    width = module.measure(module.sample_page(), 1100, 700, tmp_path / "shot.png")
    assert width <= 1100 and (tmp_path / "shot.png").stat().st_size > 0
    narrow = module.measure(module.sample_page(), 700, 700, None)  # the probe can tell an overflow
    assert narrow > 700
    assert re.search("very long team name", module.sample_page())
