"""The leaderboard as one HTML page: no script, no external asset."""

from __future__ import annotations

import html
from typing import Any

REFRESH_S = 30  # a class watching the standings sees new scores without touching the page


def leaderboard_page(scores: list[tuple[str, dict[str, Any]]], limit: int) -> str:
    """An HTML page ranking (display name, metrics) by total reward of the last `limit` episodes."""
    rows = []
    for rank, (name, m) in enumerate(sorted(scores, key=lambda s: -s[1]["total_reward"]), start=1):
        cells = (
            rank,
            f'<span title="{html.escape(name)}">{html.escape(name)}</span>',
            f"{m['total_reward']:,.0f}",
            f"{m['avg_reward']:,.1f}",
            f"{m['best_reward']:,.1f}",
            m["total_maintenance"],
            f"{m['avg_steps']:.1f}",
            f"{100 * m['failure_rate']:.1f} %",
            m["total_episodes"],
            html.escape(m["last_episode_date"].replace("T", " ")[:16]),  # to the minute, UTC
        )
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    # Headers wrap and long names are cut with an ellipsis (full name on hover), so that the whole
    # table fits a 1,100 px laptop window without a horizontal scrollbar.
    head = (
        "#", "player", f"total reward<br>(last {limit})", "mean", "best", "repairs",
        "mean length<br>(flights)", "failure<br>rate", "episodes", "last episode (UTC)",
    )  # fmt: skip
    body = "\n".join(rows) or f'<tr><td colspan="{len(head)}">no finished episode yet</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Leaderboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.2rem; color: #222; }}
h1 {{ margin: 0 0 .3rem; font-size: 1.6rem; }} p {{ margin: 0 0 1rem; color: #555; }}
table {{ border-collapse: collapse; width: 100%; max-width: 1050px; font-variant-numeric: tabular-nums; }}
th, td {{ padding: .35rem .45rem; text-align: right; }}
th, td {{ white-space: nowrap; }} th {{ border-bottom: 2px solid #444; vertical-align: bottom; font-size: .92rem; }}
tr:nth-child(even) {{ background: #f3f3f3; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
td:nth-child(2) {{ max-width: 12rem; overflow: hidden; text-overflow: ellipsis; }}
</style></head><body>
<h1>Leaderboard</h1>
<p>Ranked by the total reward of each player's last {limit} finished episodes, as the challenge
ranks. This page refreshes every {REFRESH_S} s.</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>
{body}
</table></body></html>
"""
