"""The bench's table: every figure of one run, its ceiling or target, and whether it was met."""

from __future__ import annotations

from typing import Any

TARGET_CYCLES_PER_S = 1_500
TARGET_FRAMES_RATIO = 0.25
TARGET_OFFER_P99_MS = 10.0
TARGET_IDLE_SOCKETS = 20_000
TARGET_RSS_KIB = 40.0
TARGET_WAITING = 10_000
TARGET_STALENESS_MS = 1_000.0
TARGET_MATCH_RATE = 100.0
TARGET_SCALE_RATIO = 2.0


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _verdict(ok: bool | None, quick: bool) -> str:
    if ok is None:
        return "n/a"
    if quick:
        return "(quick)"
    return "met" if ok else "MISSED"


def _pcts(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "n/a"
    return f"{_n(stats.get('p50'), 1)} / {_n(stats.get('p95'), 1)} / {_n(stats.get('p99'), 1)} ms"


def _per(cpu_percent: float | None, rate: float | None) -> str:
    """CPU time per event in microseconds, from % of one core and events per second."""
    if not cpu_percent or not rate:
        return "n/a"
    return f"{cpu_percent * 1e4 / rate:,.0f} us"


def _cpu(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return ""
    names = ("gateway", "matcher", "redis", "load", "machine")
    return ", ".join(f"{n} {cpu[n]:.0f}%" for n in names if n in cpu)


def _gateways(match: dict[str, Any]) -> str:
    count = match.get("gateways", 1)
    return f", {count} gateway processes" if count > 1 else ""


def render(results: dict[str, Any]) -> str:
    quick = bool(results.get("quick"))
    m = results["machine"]
    rows: list[tuple[str, str, str, str]] = []
    ceiling = results.get("ceiling") or {}
    echo = (ceiling.get("echo") or {}).get("frames_per_s")
    rows.append((
        "ceiling: bare websockets echo, pipelined (frames in+out/s)",
        _n(echo),
        f"{_n((ceiling.get('echo') or {}).get('sockets'))} sockets x {_n((ceiling.get('echo') or {}).get('window'))} in flight",
        "",
    ))
    redis = ceiling.get("redis") or {}
    for name, rates in (redis.get("rates") or {}).items():
        rows.append((
            f"ceiling: Redis {name} ({redis.get('tool')})",
            " / ".join(f"{_n(v)}/s {k}" for k, v in rates.items()),
            "",
            "",
        ))

    match = results.get("match") or {}
    cycles = match.get("match_cycles_per_s")
    frames = match.get("gateway_frames_per_s")
    ratio = frames / echo if frames and echo else None
    rows.append((
        f"throughput: complete match cycles/s ({_n(match.get('users'))} users, "
        f"{_n(match.get('astrologers'))} auto-accepting astrologers x capacity {_n(match.get('capacity'))}"
        f"{_gateways(match)})",
        _n(cycles, 1),
        f">= {TARGET_CYCLES_PER_S:,}",
        _verdict(None if cycles is None else cycles >= TARGET_CYCLES_PER_S, quick),
    ))
    rows.append((
        f"throughput: gateway frames in+out/s{_gateways(match)} (ratio to echo ceiling)",
        f"{_n(frames)} ({_n(ratio, 2)}x)" if frames else "n/a",
        f">= {TARGET_FRAMES_RATIO}x echo",
        _verdict(None if ratio is None else ratio >= TARGET_FRAMES_RATIO, quick),
    ))
    if match.get("cpu_closed"):
        rows.append(("throughput: CPU at the highest rate (% of one core)", _cpu(match["cpu_closed"]), "", ""))
        rows.append((
            "throughput: CPU per complete cycle (gateway / matcher)",
            f"{_per(match['cpu_closed'].get('gateway'), cycles)} / {_per(match['cpu_closed'].get('matcher'), cycles)}",
            "", "",
        ))
    closed = match.get("closed_loop_latency") or {}
    rows.append(("latency at the highest rate: request -> offer p50/p95/p99", _pcts(closed.get("request_to_offer_ms")), "", ""))
    for label, data in (match.get("paced") or {}).items():
        if label == "floor":
            rows.append((
                f"latency floor at {_n(data.get('achieved_per_s'), 0)} cycles/s: request -> ack / offer / assigned p50",
                " / ".join(_n((data.get(k) or {}).get("p50"), 1) for k in
                           ("request_to_ack_ms", "request_to_offer_ms", "request_to_assigned_ms")) + " ms",
                "", "",
            ))
            continue
        offer = data.get("request_to_offer_ms") or {}
        p99 = offer.get("p99")
        target = f"p99 <= {TARGET_OFFER_P99_MS:.0f} ms" if label == "50" else ""
        verdict = _verdict(None if p99 is None else p99 <= TARGET_OFFER_P99_MS, quick) if label == "50" else ""
        rows.append((
            f"latency at {label}% ({_n(data.get('achieved_per_s'), 0)} cycles/s): request -> offer at astrologer",
            _pcts(offer), target, verdict,
        ))
        rows.append((
            f"latency at {label}%: request -> ack (request in PostgreSQL)",
            _pcts(data.get("request_to_ack_ms")), "", "",
        ))
        rows.append((
            f"latency at {label}%: request -> assigned at user",
            _pcts(data.get("request_to_assigned_ms")), "", "",
        ))

    sockets = results.get("sockets") or {}
    idle = sockets.get("idle_sockets")
    rss = sockets.get("rss_kib_per_socket")
    rows.append((
        "connections: authenticated idle sockets in one gateway process",
        _n(idle),
        f">= {TARGET_IDLE_SOCKETS:,}",
        _verdict(None if idle is None else idle >= TARGET_IDLE_SOCKETS, quick),
    ))
    rows.append((
        "connections: gateway RSS per socket (KiB)",
        f"{_n(rss, 1)} ({_n(sockets.get('rss_before_kib'))} -> {_n(sockets.get('rss_after_kib'))} KiB)" if rss is not None else "n/a",
        f"<= {TARGET_RSS_KIB:.0f}",
        _verdict(None if rss is None else rss <= TARGET_RSS_KIB, quick),
    ))
    waiting = sockets.get("waiting")
    rate = sockets.get("matched_per_s")
    stale = sockets.get("position_staleness_p99_ms")
    rows.append((
        f"fan-out: users waiting while matching runs / matched per s ({_n(sockets.get('fanout_astrologers'))} astrologers)",
        f"{_n(waiting)} / {_n(rate, 1)}",
        f">= {TARGET_WAITING:,} / >= {TARGET_MATCH_RATE:.0f}",
        _verdict(None if waiting is None else (waiting >= TARGET_WAITING and (rate or 0) >= TARGET_MATCH_RATE), quick),
    ))
    rows.append((
        "fan-out: position staleness p99 (max)",
        f"{_n(stale, 1)} ms ({_n(sockets.get('position_staleness_max_ms'), 1)} ms)" if stale is not None else "n/a",
        f"<= {TARGET_STALENESS_MS:,.0f} ms",
        _verdict(None if stale is None else stale <= TARGET_STALENESS_MS, quick),
    ))
    rows.append((
        "fan-out: frames/s sent to clients (of which position)",
        f"{_n(sockets.get('fanout_frames_per_s'))} ({_n(sockets.get('position_frames_per_s'))})",
        "", "",
    ))
    if sockets.get("cpu_fanout"):
        cpu = sockets["cpu_fanout"]
        sent = sockets.get("fanout_frames_per_s")
        rows.append(("fan-out: CPU (% of one core)", _cpu(cpu), "", ""))
        rows.append((
            "fan-out: CPU per frame sent (gateway / matcher)",
            f"{_per(cpu.get('gateway'), sent)} / {_per(cpu.get('matcher'), sent)}",
            "", "",
        ))

    scale = results.get("scale") or {}
    real, pure = scale.get("real") or {}, scale.get("pure") or {}
    sizes = results["sizes"]
    small_w, big_w = sizes["scale_waiting"]
    small_a, big_a = sizes["scale_astrologers"]

    def pair(data: dict[str, Any], a: str, b: str) -> tuple[str, float | None]:
        x = data.get(a, {}).get("decide_us", {}).get("p50")
        y = data.get(b, {}).get("decide_us", {}).get("p50")
        if x is None or y is None:
            return "n/a", None
        return f"{_n(x, 0)} us vs {_n(y, 0)} us ({y / x:.2f}x)", y / x

    base, more_w, more_a = f"{small_w}x{small_a}", f"{big_w}x{small_a}", f"{small_w}x{big_a}"
    text, factor = pair(real, base, more_w)
    rows.append((
        f"scale: Matcher.decide() p50, {small_w:,} vs {big_w:,} waiting ({small_a} astrologers)",
        text, f"<= {TARGET_SCALE_RATIO:.0f}x", _verdict(None if factor is None else factor <= TARGET_SCALE_RATIO, quick),
    ))
    text, _ = pair(real, base, more_a)
    rows.append((f"scale: Matcher.decide() p50, {small_a} vs {big_a:,} astrologers ({small_w} waiting)", text, "", ""))
    text, _ = pair(pure, base, more_w)
    rows.append((f"scale: flow.decide alone p50, {small_w:,} vs {big_w:,} waiting", text, "", ""))
    text, _ = pair(pure, base, more_a)
    rows.append((f"scale: flow.decide alone p50, {small_a} vs {big_a:,} astrologers", text, "", ""))

    widths = [max(len(r[i]) for r in rows + [("figure", "measured", "ceiling / target", "")]) for i in range(4)]
    lines = [
        f"astroq bench{' (--quick: small sizes, targets not judged)' if quick else ''}",
        f"machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}, "
        f"load average {m['loadavg_before']} before, {m.get('loadavg_after')} after; stores: {results.get('stores')}",
        f"ASTROQ_WS_RATE={results['ws_rate']} ASTROQ_WS_BURST={results['ws_burst']} for this run "
        "(the bots act far faster than people; SPEC defaults are 20 and 40)",
        "",
        "| " + " | ".join(h.ljust(w) for h, w in zip(("figure", "measured", "ceiling / target", ""), widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    if results.get("errors"):
        lines.append("")
        for name, error in results["errors"].items():
            lines.append(f"phase {name} failed: {error}")
    for name, value in (match.get("errors") or {}).items():
        lines.append(f"match errors: {name} x{value}")
    for phase in ("match", "sockets"):
        for warning in (results.get(phase) or {}).get("service_warnings") or []:
            lines.append(f"{phase} service log: {warning}")
    if sockets.get("idle_sockets_wanted") and (sockets.get("idle_sockets") or 0) < sockets["idle_sockets_wanted"]:
        lines.append(
            f"idle sockets: {sockets['idle_sockets']:,} of {sockets['idle_sockets_wanted']:,} wanted; "
            f"RLIMIT_NOFILE is {sockets.get('nofile_gateway')} for the gateway and cannot be raised here"
        )
    lines.append(f"\nelapsed {results.get('elapsed_s')} s; phases {results.get('phase_s')}")
    return "\n".join(lines)
