"""`python -m bench --quick --json` runs to the end and reports every figure.

A smoke check only: the bench starts real `astroq serve` and `astroq matcher`
processes on this suite's PostgreSQL and Redis (a database and key prefix of its
own), drives them, and prints one JSON object as its last line. No figure is
judged here; timings belong in docs/performance.md, not in assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.__main__ import JSON_KEYS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_bench_completes_with_every_key(store_urls: tuple[str, str]) -> None:
    database_url, redis_url = store_urls
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTROQ_")}
    out = subprocess.run(
        # Two gateways in the match phase: the bots take turns between them.
        [sys.executable, "-m", "bench", "--quick", "--json", "--gateways", "2",
         "--database-url", database_url, "--redis-url", redis_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = orjson.loads(out.stdout.strip().splitlines()[-1])
    missing = [key for key in JSON_KEYS if key not in report]
    assert not missing, missing
    for key in ("request_to_offer_ms", "request_to_assigned_ms"):
        assert {"p50", "p95", "p99"} <= set(report[key]), report[key]
    match = report["details"]["match"]
    assert match["gateways"] == 2 and match["match_cycles_per_s"] > 0, match
