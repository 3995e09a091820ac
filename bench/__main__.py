"""`python -m bench [--quick] [--json]`: astroq's performance, measured end to end.

Starts `astroq serve` and `astroq matcher` as real processes on real Redis and
PostgreSQL (a fresh database and key prefix per service), drives them from a
load generator in its own process, and prints one table: the ceilings of this
machine, match throughput, latency, idle connections, fan-out and matcher
scaling. With --json the last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator

import orjson

from bench import accounts, ceiling, scale
from bench.limits import nofile_limit, raise_nofile
from bench.report import render
from bench.service import BENCH_WS_BURST, BENCH_WS_RATE, REPO, Service
from bench.stores import Servers, open_servers


@dataclass(frozen=True)
class Sizes:
    echo_sockets: int
    echo_window: int
    echo_s: float
    redis_requests: int
    match_users: int
    match_astrologers: int
    match_capacity: int
    warmup_s: float
    closed_s: float
    paced_s: float
    idle_sockets: int
    waiting: int
    fan_astrologers: int
    hold_s: float
    join_rate: float
    fan_s: float
    scale_rounds: int
    scale_rounds_big_roster: int  # fewer: the first round reads every row the setup's offers changed
    floor_rate: float = 10.0  # a light load: the latency floor
    match_gateways: int = 1
    scale_waiting: tuple[int, int] = (100, 100_000)
    scale_astrologers: tuple[int, int] = (10, 10_000)


FULL = Sizes(
    echo_sockets=50, echo_window=32, echo_s=5.0, redis_requests=100_000,
    match_users=400, match_astrologers=50, match_capacity=10, warmup_s=3.0, closed_s=10.0, paced_s=8.0,
    idle_sockets=20_000, waiting=10_000, fan_astrologers=150, hold_s=0.25, join_rate=2_000.0, fan_s=10.0,
    scale_rounds=300, scale_rounds_big_roster=50,
)
QUICK = Sizes(
    echo_sockets=20, echo_window=32, echo_s=2.0, redis_requests=20_000,
    match_users=100, match_astrologers=10, match_capacity=10, warmup_s=1.0, closed_s=3.0, paced_s=2.0,
    idle_sockets=1_000, waiting=500, fan_astrologers=10, hold_s=0.05, join_rate=2_000.0, fan_s=3.0,
    scale_rounds=30, scale_rounds_big_roster=5,
)

FD_MARGIN = 400  # descriptors a process needs besides the sockets: Redis, PostgreSQL, logs

JSON_KEYS = (
    "match_cycles_per_s", "gateway_frames_per_s", "echo_frames_per_s", "request_to_offer_ms",
    "request_to_assigned_ms", "idle_sockets", "rss_kib_per_socket", "position_staleness_p99_ms",
    "decision_us_100", "decision_us_100k",
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as handle:
            mem_kib = int(handle.readline().split()[1])
    except OSError:
        mem_kib = 0
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def run_load(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Runs one load-generator job in its own process; its progress goes to our stderr."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.load"],
        input=orjson.dumps(job),
        stdout=subprocess.PIPE,
        cwd=REPO,
        timeout=timeout_s,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode})")
    result: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
    return result


def phase_ceiling(servers: Servers, sizes: Sizes) -> dict[str, Any]:
    popen, url = ceiling.start_echo()
    try:
        echo = run_load(
            {"kind": "echo", "url": url, "sockets": sizes.echo_sockets, "window": sizes.echo_window,
             "duration_s": sizes.echo_s, "warmup_s": 1.0},
            60,
        )
    finally:
        popen.kill()
        popen.wait()
    log(f"echo ceiling: {echo['frames_per_s']} frames/s")
    redis = ceiling.redis_benchmark(servers.redis_url, servers.scratch().prefix, sizes.redis_requests)
    return {"echo": echo, "redis": redis}


@contextlib.contextmanager
def running_service(
    servers: Servers, groups: dict[str, tuple[str, int, int]], warnings: list[str], gateways: int = 1
) -> Iterator[tuple[Service, dict[str, list[str]], dict[str, list[int]]]]:
    """A fresh database and prefix with the accounts written, `astroq matcher` and `astroq serve` up."""
    stores = servers.fresh()
    made = asyncio.run(accounts.create(stores.database_url, groups))
    service = Service(stores.database_url, stores.redis_url, stores.prefix, gateways=gateways)
    ok = False
    try:
        service.start()
        pids = {
            "gateway": [service.pid(name) for name in service.gateway_names],
            "matcher": [service.pid("matcher")],
            **redis_pid(servers),
        }
        yield service, made, pids
        service.check_alive()
        ok = True
    finally:
        service.stop()
        warnings += service.warnings()
        for line in warnings:
            log(line)
        service.cleanup(keep_logs=not ok or bool(warnings))
        if not ok or warnings:
            log(f"service logs kept in {service.workdir}")


def phase_match(servers: Servers, sizes: Sizes) -> dict[str, Any]:
    groups = {"a": ("astrologer", sizes.match_astrologers, sizes.match_capacity), "u": ("user", sizes.match_users, 1)}
    warnings: list[str] = []
    with running_service(servers, groups, warnings, sizes.match_gateways) as (service, made, pids):
        result = run_load(
            {
                "kind": "match", "ws_urls": service.ws_urls, "secret": service.secret,
                "users": made["u"], "astrologers": made["a"], "capacity": sizes.match_capacity,
                "warmup_s": sizes.warmup_s, "duration_s": sizes.closed_s, "paced_s": sizes.paced_s,
                "fractions": [0.5, 0.8], "floor_rate": sizes.floor_rate, "pids": pids,
            },
            120 + 4 * (sizes.warmup_s + sizes.closed_s + 2 * sizes.paced_s),
        )
    result["service_warnings"] = warnings
    return result


def phase_sockets(servers: Servers, sizes: Sizes) -> dict[str, Any]:
    groups = {"f": ("astrologer", sizes.fan_astrologers, 1), "i": ("user", sizes.idle_sockets, 1)}
    warnings: list[str] = []
    with running_service(servers, groups, warnings) as (service, made, pids):
        # Each socket costs a file descriptor on both ends; where the hard limit cannot
        # be raised (no CAP_SYS_RESOURCE) the run holds as many as it allows, and says so.
        gateway_nofile = nofile_limit(service.pid("serve"))
        own_nofile = raise_nofile(sizes.idle_sockets + FD_MARGIN)
        idle = min(sizes.idle_sockets, gateway_nofile - FD_MARGIN, own_nofile - FD_MARGIN)
        if idle < sizes.idle_sockets:
            log(f"RLIMIT_NOFILE allows {idle} sockets, not {sizes.idle_sockets} (gateway {gateway_nofile}, "
                f"load generator {own_nofile})")
        result = run_load(
            {
                "kind": "sockets", "ws_url": service.ws_url, "secret": service.secret,
                "database_url": service.database_url,
                "idle": idle, "idle_users": made["i"][:idle], "waiting": min(sizes.waiting, idle),
                "astrologers": made["f"], "hold_s": sizes.hold_s, "request_rate": sizes.join_rate,
                "duration_s": sizes.fan_s, "pids": pids,
            },
            300 + sizes.idle_sockets / 100,
        )
        result["nofile_gateway"] = gateway_nofile
        result["idle_sockets_wanted"] = sizes.idle_sockets
    result["service_warnings"] = warnings
    return result


def phase_scale(servers: Servers, sizes: Sizes) -> dict[str, Any]:
    prefix = servers.scratch().prefix
    small_w, big_w = sizes.scale_waiting
    small_a, big_a = sizes.scale_astrologers
    configs = [
        (small_w, small_a, sizes.scale_rounds),
        (big_w, small_a, sizes.scale_rounds),
        (small_w, big_a, sizes.scale_rounds_big_roster),
    ]
    out: dict[str, Any] = {"real": asyncio.run(scale.decision_times(servers.redis_url, prefix, configs)), "pure": {}}
    for waiting, astrologers, _ in configs:
        key = f"{waiting}x{astrologers}"
        out["pure"][key] = scale.pure_decision_time(waiting, astrologers, 50)
        log(f"decision {key}: {out['real'][key]['decide_us']['p50']} us (flow.decide alone "
            f"{out['pure'][key]['decide_us']['p50']} us)")
    return out


def redis_pid(servers: Servers) -> dict[str, list[int]]:
    """The Redis server's pid, when it runs on this machine, for the CPU figures."""
    import redis

    try:
        client = redis.Redis.from_url(servers.redis_url)
        pid = int(client.info("server")["process_id"])
        client.close()
        os.kill(pid, 0)
        return {"redis": [pid]}
    except Exception:
        return {}


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable object: the keys the issue names, then the details."""
    match = results.get("match") or {}
    paced = match.get("paced", {})
    half = paced.get("50", {})
    sockets = results.get("sockets") or {}
    real = (results.get("scale") or {}).get("real", {})
    echo = ((results.get("ceiling") or {}).get("echo") or {}).get("frames_per_s")

    def decision(key: str) -> float | None:
        value = real.get(key, {}).get("decide_us", {}).get("p50")
        return float(value) if value is not None else None

    sizes = results["sizes"]
    out: dict[str, Any] = {
        "match_cycles_per_s": match.get("match_cycles_per_s"),
        "gateway_frames_per_s": match.get("gateway_frames_per_s"),
        "echo_frames_per_s": echo,
        "request_to_offer_ms": half.get("request_to_offer_ms"),
        "request_to_assigned_ms": half.get("request_to_assigned_ms"),
        "idle_sockets": sockets.get("idle_sockets"),
        "rss_kib_per_socket": sockets.get("rss_kib_per_socket"),
        "position_staleness_p99_ms": sockets.get("position_staleness_p99_ms"),
        "decision_us_100": decision(f"{sizes['scale_waiting'][0]}x{sizes['scale_astrologers'][0]}"),
        "decision_us_100k": decision(f"{sizes['scale_waiting'][1]}x{sizes['scale_astrologers'][0]}"),
    }
    out["details"] = {k: v for k, v in results.items() if k != "sizes"}
    out["details"]["sizes"] = sizes
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run under 60 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--database-url", help="PostgreSQL to make the run's databases on")
    parser.add_argument("--redis-url", help="Redis for the run (its own key prefix)")
    parser.add_argument("--embedded", action="store_true", help="start private PostgreSQL and Redis (server/embedded.py)")
    parser.add_argument("--idle", type=int, help="idle sockets to hold (default 20,000; --quick 1,000)")
    parser.add_argument("--waiting", type=int, help="users waiting in the fan-out (default 10,000; --quick 500)")
    parser.add_argument("--gateways", type=int, help="gateway processes in the match phase (default 1)")
    parser.add_argument(
        "--only", action="append", choices=["ceiling", "match", "sockets", "scale"],
        help="run only these phases (repeatable)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.idle is not None:
        sizes = replace(sizes, idle_sockets=args.idle, waiting=min(sizes.waiting, args.idle))
    if args.gateways is not None:
        sizes = replace(sizes, match_gateways=args.gateways)
    if args.waiting is not None:
        sizes = replace(sizes, waiting=args.waiting, idle_sockets=max(sizes.idle_sockets, args.waiting))
    began = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "sizes": asdict(sizes),
        "ws_rate": BENCH_WS_RATE,
        "ws_burst": BENCH_WS_BURST,
        "errors": {},
    }
    servers = open_servers(args.database_url, args.redis_url, args.embedded)
    results["stores"] = servers.source
    phases: list[tuple[str, Callable[[Servers, Sizes], dict[str, Any]]]] = [
        ("ceiling", phase_ceiling),
        ("match", phase_match),
        ("sockets", phase_sockets),
        ("scale", phase_scale),
    ]
    try:
        for name, run in phases:
            if args.only and name not in args.only:
                continue
            log(f"phase {name}")
            started = time.monotonic()
            try:
                results[name] = run(servers, sizes)
            except Exception as exc:  # one failed phase must not hide the others' figures
                traceback.print_exc()
                results["errors"][name] = repr(exc)
            results.setdefault("phase_s", {})[name] = round(time.monotonic() - started, 1)
    finally:
        servers.close()
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(render(results))
    if args.json:
        print(orjson.dumps(summary(results)).decode())
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
