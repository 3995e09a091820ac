"""The admin's view of the line (`GET /api/v1/admin/stats` and `stats` frames).

`share` is an astrologer's part of today's assignments; `target` is the part
the flow algorithm aims at right now: its effective weight over the sum of the
effective weights of the online astrologers who take general requests.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from matcher.store import Store


def _effective_weight(is_top: bool, weight: float, top_flow: str, boost: float) -> float:
    if is_top and top_flow == "off":
        return 0.0
    if is_top and top_flow == "boost":
        return weight * boost
    return weight


async def admin_stats(
    store: Store, pool: asyncpg.Pool, lines: dict[str, Any] | None = None
) -> dict[str, Any]:
    data = lines if lines is not None else await store.lines()
    astrologers = data["astrologers"] if isinstance(data["astrologers"], list) else []
    async with pool.acquire() as conn:
        # One row per astrologer, whatever the day's volume (migration 003).
        rows = await conn.fetch(
            "SELECT u.id::text AS id, u.name, coalesce(d.assigned, 0) AS assigned"
            " FROM astrologers a JOIN users u ON u.id = a.id"
            " LEFT JOIN assignments_daily d ON d.astrologer_id = a.id"
            "  AND d.day = (now() AT TIME ZONE 'UTC')::date"
            " ORDER BY u.name, u.id"
        )
    live = {a[0]: a for a in astrologers}
    total = sum(r["assigned"] for r in rows)
    weights: dict[str, float] = {}
    for aid, status, _cap, flow_enabled, is_top, weight, _load in astrologers:
        if status == "online" and flow_enabled:
            weights[aid] = _effective_weight(is_top, weight, data["top_flow"], data["boost"])
    weight_sum = sum(weights.values())
    out = []
    online = busy = 0
    for r in rows:
        entry = live.get(r["id"])
        status = entry[1] if entry else "offline"
        if status == "online":
            online += 1
        if entry and entry[6] >= entry[2]:
            busy += 1
        out.append(
            {
                "id": r["id"],
                "name": r["name"],
                "status": status,
                "assigned_today": r["assigned"],
                "share": round(r["assigned"] / total, 4) if total else 0.0,
                "target": round(weights.get(r["id"], 0.0) / weight_sum, 4) if weight_sum else 0.0,
                # Beyond the contract: what the admin table edits in place.
                "is_top": bool(entry[4]) if entry else False,
                "weight": entry[5] if entry else 1.0,
                "capacity": entry[2] if entry else 1,
                "flow_enabled": bool(entry[3]) if entry else True,
            }
        )
    return {
        "waiting": data["live"],
        "online": online,
        "busy": busy,
        "assigned_today": total,
        "astrologers": out,
    }
