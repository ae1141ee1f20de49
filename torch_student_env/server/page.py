"""The leaderboard as one HTML page: no script, no external asset."""

from __future__ import annotations

import html
from typing import Any


def leaderboard_page(scores: list[tuple[str, dict[str, Any]]], limit: int) -> str:
    """An HTML page ranking (display name, metrics) by total reward of the last `limit` episodes."""
    rows = []
    for rank, (name, m) in enumerate(sorted(scores, key=lambda s: -s[1]["total_reward"]), start=1):
        cells = (
            rank,
            html.escape(name),
            f"{m['total_reward']:,.0f}",
            f"{m['avg_reward']:,.1f}",
            f"{m['best_reward']:,.1f}",
            m["total_maintenance"],
            f"{m['avg_steps']:.1f}",
            f"{100 * m['failure_rate']:.1f} %",
            m["total_episodes"],
            html.escape(m["last_episode_date"].replace("T", " ").replace("+00:00", " UTC")),
        )
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = (
        "rank", "player", f"total reward (last {limit})", "mean", "best", "repairs",
        "mean length (flights)", "failure rate", "episodes", "last episode",
    )  # fmt: skip
    body = "\n".join(rows) or f'<tr><td colspan="{len(head)}">no finished episode yet</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ padding: .4rem .8rem; text-align: right; white-space: nowrap; }}
th {{ border-bottom: 2px solid #444; }} tr:nth-child(even) {{ background: #f3f3f3; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
</style></head><body>
<h1>Leaderboard</h1>
<p>Ranked by the total reward of each player's last {limit} finished episodes, as the challenge ranks.</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>
{body}
</table></body></html>
"""
