"""deploy/prometheus.yml, deploy/alerts.yml and the Grafana dashboards, checked
with the real promtool and a real Prometheus server.

Every PromQL expression of every dashboard panel and alert rule goes through a
running Prometheus' HTTP API; with astroq running and some traffic, the panels
about traffic must show data.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus.yml"
ALERTS_YML = DEPLOY / "alerts.yml"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
DATASOURCE_YML = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Grafana fills these in before it sends a query; Prometheus would reject them.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}

# Jobs the dashboards and alerts select on; the test's Prometheus uses the same.
GATEWAY_JOB = "astroq-gateway"
MATCHER_JOB = "astroq-matcher"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run scripts/ensure-ops-tools (installs prometheus and nginx)")
    return path


def run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, input=stdin.decode() if stdin is not None else None,
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ the queries


@dataclass(frozen=True)
class Query:
    where: str  # "live-queue.json / Waiting per line / A" or "alert AstroqNoActiveMatcher"
    title: str
    expr: str

    @property
    def promql(self) -> str:
        expr = self.expr
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        return expr


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def dashboard_queries() -> list[Query]:
    queries = []
    for name, dashboard in load_dashboards().items():
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                queries.append(
                    Query(f"{name} / {panel['title']} / {target['refId']}", panel["title"], target["expr"])
                )
    return queries


def alert_rules() -> list[dict[str, Any]]:
    import yaml

    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_queries() -> list[Query]:
    return [Query(f"alert {rule['alert']}", rule["alert"], rule["expr"]) for rule in alert_rules()]


# ------------------------------------------------------------------ a real Prometheus


class Prometheus:
    """A prometheus server on a free port with its own config and storage in tmp."""

    def __init__(self, workdir: Path, jobs: dict[str, list[str]], scrape_interval_s: float = 1.0) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        interval = f"{int(scrape_interval_s * 1000)}ms"
        jobs = {"prometheus": [f"127.0.0.1:{self.port}"], **jobs}
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(ALERTS_YML)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in jobs.items()
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        # JSON is YAML.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = run([tool("promtool"), "check", "config", str(self.config_path)])
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Blocks; async tests call it in a thread so the live service keeps serving."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus did not get ready in {timeout_s} s:\n{self.log()}")

    def __enter__(self) -> "Prometheus":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            body = json.load(error)
            error.close()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        result = data["result"]
        # A scalar or string answer is one value, not a list of series.
        return result if isinstance(result, list) else [result]

    def scrapes(self) -> int:
        """Successful scrapes of the target scraped least (each target's `up` samples == 1)."""
        targets = self.api("targets", state="active")["activeTargets"]
        counts = []
        for target in targets:
            labels = target["labels"]
            result = self.query(
                f'sum_over_time(up{{instance="{labels["instance"]}", job="{labels["job"]}"}}[5m])'
            )
            counts.append(int(float(result[0]["value"][1])) if result else 0)
        return min(counts, default=0)

    def wait_for_scrapes(self, count: int, timeout_s: float = 30) -> None:
        """Blocks until every target has been scraped successfully `count` times."""
        deadline = time.monotonic() + timeout_s
        while (done := self.scrapes()) < count:
            if time.monotonic() > deadline:
                targets = self.api("targets", state="active")["activeTargets"]
                health = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
                raise AssertionError(f"{done} of {count} scrapes after {timeout_s} s: {health}\n{self.log()}")
            time.sleep(0.2)

    def wait_for_rule_evaluation(self, timeout_s: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            rules = [r for g in self.api("rules")["groups"] for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("0001") is False for r in rules):
                return rules
            if time.monotonic() > deadline:
                raise AssertionError(f"rules not evaluated: {rules}")
            time.sleep(0.25)


# ------------------------------------------------------------------ static checks


def test_promtool_accepts_the_config() -> None:
    result = run([tool("promtool"), "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_accepts_the_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(ALERTS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_scrapes_every_gateway_and_matcher() -> None:
    import yaml

    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets[GATEWAY_JOB] == ["gateway1:8000", "gateway2:8000"]
    assert targets[MATCHER_JOB] == ["matcher1:9100", "matcher2:9100"]
    assert config["rule_files"] == ["alerts.yml"]


def test_alert_rules_cover_the_runbook() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "AstroqRequestWaitP95High",
        "AstroqNoActiveMatcher",
        "AstroqTargetDown",
        "AstroqErrorRateHigh",
    } <= names
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for name in names:
        assert name in runbook, f"{name} has no entry in docs/operations.md"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


# promtool's unit tests for rules: the alerts fire when they should, and not otherwise.
RULE_TESTS = """
rule_files:
  - {alerts}
evaluation_interval: 15s
tests:
  # One matcher holds the lease, then nobody does.
  - interval: 15s
    input_series:
      - series: 'astroq_matcher_leader{{job="astroq-matcher", instance="matcher1:9100"}}'
        values: '1x8 0x12'
      - series: 'astroq_matcher_leader{{job="astroq-matcher", instance="matcher2:9100"}}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 1m
        alertname: AstroqNoActiveMatcher
        exp_alerts: []
      - eval_time: 1m
        alertname: AstroqSeveralActiveMatchers
        exp_alerts: []
      - eval_time: 4m
        alertname: AstroqNoActiveMatcher
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: "No astroq matcher holds the lease"
              description: "No matcher reports astroq_matcher_leader = 1: requests are queued but nobody is matched."
  # No matcher is scraped at all.
  - interval: 15s
    input_series:
      - series: 'up{{job="astroq-gateway", instance="gateway1:8000"}}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 2m
        alertname: AstroqNoActiveMatcher
        exp_alerts:
          - exp_labels: {{severity: critical, job: astroq-matcher}}
            exp_annotations:
              summary: "No astroq matcher holds the lease"
              description: "No matcher reports astroq_matcher_leader = 1: requests are queued but nobody is matched."
  # Both matchers claim the lease; a gateway stops answering scrapes.
  - interval: 15s
    input_series:
      - series: 'astroq_matcher_leader{{job="astroq-matcher", instance="matcher1:9100"}}'
        values: '1x20'
      - series: 'astroq_matcher_leader{{job="astroq-matcher", instance="matcher2:9100"}}'
        values: '1x20'
      - series: 'up{{job="astroq-gateway", instance="gateway2:8000"}}'
        values: '1x4 0x16'
    alert_rule_test:
      - eval_time: 3m
        alertname: AstroqSeveralActiveMatchers
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "2 astroq matchers report holding the lease"
              description: "More than one matcher reports astroq_matcher_leader = 1 for a minute."
      - eval_time: 3m
        alertname: AstroqTargetDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: astroq-gateway, instance: "gateway2:8000"}}
            exp_annotations:
              summary: "astroq-gateway gateway2:8000 is not answering scrapes"
              description: "The scrape of gateway2:8000 (astroq-gateway) has failed for 1 minute."
  # Every general request waits 10 minutes; then a burst of errors.
  - interval: 1m
    input_series:
      - series: 'astroq_request_wait_seconds_bucket{{job="astroq-matcher", instance="matcher1:9100", line="general", le="300"}}'
        values: '0x40'
      - series: 'astroq_request_wait_seconds_bucket{{job="astroq-matcher", instance="matcher1:9100", line="general", le="600"}}'
        values: '0+10x40'
      - series: 'astroq_request_wait_seconds_bucket{{job="astroq-matcher", instance="matcher1:9100", line="general", le="+Inf"}}'
        values: '0+10x40'
      - series: 'astroq_frames_total{{job="astroq-gateway", instance="gateway1:8000", type="request"}}'
        values: '0+600x40'
      - series: 'astroq_errors_total{{job="astroq-gateway", instance="gateway1:8000", code="internal"}}'
        values: '0+120x40'
    alert_rule_test:
      - eval_time: 5m
        alertname: AstroqRequestWaitP95High
        exp_alerts: []
      - eval_time: 30m
        alertname: AstroqRequestWaitP95High
        exp_alerts:
          - exp_labels: {{severity: warning, line: general}}
            exp_annotations:
              summary: "Requests in the general line wait too long"
              description: "p95 wait from request to assignment is 9m 45s (threshold 5m) over the last 10 minutes."
      - eval_time: 30m
        alertname: AstroqErrorRateHigh
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "20% of client frames get an error"
              description: "More than 5% of frames answered with an error for 10 minutes; see the errors-by-code panel."
      - eval_time: 30m
        alertname: AstroqServerErrors
        exp_alerts:
          - exp_labels: {{severity: critical, code: internal}}
            exp_annotations:
              summary: "Gateways answer with internal errors"
              description: "2 internal errors per second for 5 minutes."
"""


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(alerts=ALERTS_YML))
    result = run([tool("promtool"), "test", "rules", str(tests)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_well_formed() -> None:
    import yaml

    datasource_uids = {ds["uid"] for ds in yaml.safe_load(DATASOURCE_YML.read_text())["datasources"]}
    dashboards = load_dashboards()
    assert set(dashboards) == {"live-queue.json", "operations.json"}
    assert len({d["uid"] for d in dashboards.values()}) == len(dashboards)
    for name, dashboard in dashboards.items():
        ids = [panel["id"] for panel in _panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in _panels(dashboard["panels"]):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name} / {panel['title']} overflows the grid"
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in datasource_uids, f"{name} / {panel['title']}"
            refs = [target["refId"] for target in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), f"{name} / {panel['title']}"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in datasource_uids
                assert target["expr"].strip()


def test_dashboards_show_what_the_runbook_promises() -> None:
    titles = {q.title for q in dashboard_queries()}
    assert {
        "Waiting per line",
        "Wait time p50 / p95 / p99",
        "Assignments per second",
        "Astrologers online and busy",
        "Offer outcomes",
        "Frames per second",
        "Errors by code",
        "Matcher decision time",
        "Open sockets by role",
        "Lease holder",
    } <= titles


def test_every_metric_in_the_queries_exists() -> None:
    """A typo in a metric name would give an empty panel, not an error."""
    exposed = subprocess.run(
        [sys.executable, "-c", "from server import metrics; print(metrics.render().decode())"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
    ).stdout
    families = {line.split()[2] for line in exposed.splitlines() if line.startswith("# TYPE ")}
    names = set(families)
    for family in families:
        names |= {f"{family}_bucket", f"{family}_count", f"{family}_sum", f"{family}_total"}
    names.add("up")
    import re

    for query in dashboard_queries() + alert_queries():
        for name in re.findall(r"\b(astroq_[a-z_]+|up)\b(?=\s*[{\[)])", query.expr):
            assert name in names, f"{query.where}: unknown metric {name}"


def test_metrics_exposition_passes_promtool() -> None:
    """Every family with a sample (labelled ones after one observation) passes the linter."""
    script = (
        "from server import metrics as m\n"
        "m.REQUEST_WAIT.labels('general').observe(1.5)\n"
        "m.REQUESTS.labels('assigned').inc()\n"
        "m.OFFERS.labels('accepted').inc()\n"
        "m.WAITING.labels('general').set(2)\n"
        "m.ASTROLOGERS.labels('online').set(1)\n"
        "m.FRAME_TIME.labels('ping').observe(0.001)\n"
        "m.FRAMES.labels('ping').inc()\n"
        "m.ERRORS.labels('bad_json').inc()\n"
        "m.SOCKETS.labels('user').inc()\n"
        "import sys; sys.stdout.write(m.render().decode())\n"
    )
    exposed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, cwd=ROOT, timeout=60
    ).stdout
    result = run([tool("promtool"), "check", "metrics"], stdin=exposed)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_evaluates(tmp_path: Path) -> None:
    """Against a Prometheus with no astroq targets: the expressions parse and
    evaluate (empty results are fine here), and every alert rule evaluates."""
    with Prometheus(tmp_path, {}) as prometheus:
        failures = []
        for query in dashboard_queries() + alert_queries():
            try:
                prometheus.query(query.promql)
            except AssertionError as error:
                failures.append(f"{query.where}: {error}")
        assert not failures, "\n".join(failures)
        rules = prometheus.wait_for_rule_evaluation()
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
        assert not bad, bad
        # Nothing is scraped, so "no matcher" is exactly the alert that must be pending.
        pending = {r["name"] for r in rules if r["state"] != "inactive"}
        assert pending == {"AstroqNoActiveMatcher"}


# ------------------------------------------------------------------ with astroq running

# Panels whose numbers must move with traffic, beyond merely returning series.
MUST_BE_POSITIVE = {
    "Assignments per second",
    "Frames per second",
    "Errors by code",
}


def with_search_path(dsn: str, schema: str) -> str:
    """The DSN with the harness' per-test schema as search_path (asyncpg passes
    unknown query parameters on as server settings)."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(parts.query) + [("search_path", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class MatcherProcess:
    """`astroq matcher` as its own process, as deployed, with its metrics port on."""

    def __init__(self, service: Any, workdir: Path) -> None:
        settings = service.settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "matcher.log"
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("ASTROQ_")}
        self.env.update(
            PYTHONPATH=str(ROOT),
            ASTROQ_DATABASE_URL=with_search_path(settings.database_url, service.schema),
            ASTROQ_REDIS_URL=settings.redis_url,
            ASTROQ_REDIS_PREFIX=settings.redis_prefix,
            ASTROQ_JWT_SECRET=settings.jwt_secret,
            ASTROQ_HOST="127.0.0.1",
            ASTROQ_METRICS_PORT=str(self.port),
            ASTROQ_MATCHER_LEASE=str(settings.matcher_lease_s),
            ASTROQ_OFFER_TIMEOUT=str(settings.offer_timeout_s),
            ASTROQ_RECONNECT_GRACE=str(settings.reconnect_grace_s),
            ASTROQ_MAX_WAIT=str(settings.max_wait_s),
        )
        # Its own working directory, so no developer's .env is read.
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "matcher"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env,
            )

    def metrics(self) -> bytes:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            return bytes(answer.read())

    def wait_leader(self, timeout_s: float = 30) -> None:
        """Blocks until the matcher serves /healthz and holds the lease."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"astroq matcher exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    pass
                if b"\nastroq_matcher_leader 1.0" in self.metrics():
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"astroq matcher did not take the lease in {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return bytes(answer.read())


async def make_traffic(service: Any) -> None:
    """A little of everything the dashboards count: sockets of both roles, an
    assignment and a session, a declined offer, a cancel, pings and a bad frame."""
    astrologer = await service.astrologer()
    console = await service.online(astrologer)
    first, second = await service.user(), await service.user()
    user = await service.connect(first)
    await user.send({"type": "ping"})
    await user.wait_for("pong")

    request = await user.ok({"type": "request", "kind": "chat", "astrologer_id": None})
    offer = await console.wait_for("offer", timeout=10, request_id=request["request_id"])
    accepted = await console.ok({"type": "accept", "offer_id": offer["offer_id"]})
    await user.wait_for("assigned", timeout=10, request_id=request["request_id"])
    await user.ok({"type": "end", "session_id": accepted["session_id"]})

    # A direct request, declined: it ends as declined.
    other = await service.connect(second)
    direct = await other.ok({"type": "request", "kind": "call", "astrologer_id": astrologer.id})
    offer = await console.wait_for("offer", timeout=10, request_id=direct["request_id"])
    await console.ok({"type": "decline", "offer_id": offer["offer_id"]})
    await other.wait_for("cancelled", timeout=10, request_id=direct["request_id"])

    # A general request nobody takes, then cancelled.
    await console.ok({"type": "status", "status": "offline"})
    waiting = await other.ok({"type": "request", "kind": "chat", "astrologer_id": None})
    await other.ok({"type": "cancel", "request_id": waiting["request_id"]})

    await user.send("{not json")
    await user.wait_for("error", code="bad_json")


async def test_panels_show_live_traffic(service_factory: Any, tmp_path: Path) -> None:
    """A real Prometheus scrapes a live gateway and a live `astroq matcher` every
    second; after some traffic every dashboard query returns data and every
    alert query evaluates."""
    service = await service_factory(with_matcher=False)
    matcher = MatcherProcess(service, tmp_path)
    prometheus = Prometheus(
        tmp_path,
        {
            GATEWAY_JOB: [service.base_url.removeprefix("http://")],
            MATCHER_JOB: [matcher.url.removeprefix("http://")],
        },
    )
    matcher.start()
    try:
        # Blocking waits run in threads: the gateway under test lives on this loop.
        await asyncio.to_thread(matcher.wait_leader)
        prometheus.start()
        await asyncio.to_thread(prometheus.wait_ready)
        await asyncio.to_thread(prometheus.wait_for_scrapes, 2)

        # Twice, with scrapes in between: a labelled series appears with its
        # first event, and rate() needs an increase between two samples.
        for _ in range(2):
            await make_traffic(service)
            done = await asyncio.to_thread(prometheus.scrapes)
            await asyncio.to_thread(prometheus.wait_for_scrapes, done + 2)

        for url in (f"{service.base_url}/metrics", f"{matcher.url}/metrics"):
            exposed = await asyncio.to_thread(fetch, url)
            check = await asyncio.to_thread(run, [tool("promtool"), "check", "metrics"], exposed)
            assert check.returncode == 0, f"{url}: {check.stdout}{check.stderr}"

        empty, failures = [], []
        results: dict[str, list[dict[str, Any]]] = {}
        for query in dashboard_queries():
            try:
                results[query.where] = await asyncio.to_thread(prometheus.query, query.promql)
            except AssertionError as error:
                failures.append(f"{query.where}: {error}")
                continue
            if not results[query.where]:
                empty.append(query.where)
        for query in alert_queries():
            try:
                await asyncio.to_thread(prometheus.query, query.promql)
            except AssertionError as error:
                failures.append(f"{query.where}: {error}")
        assert not failures, "\n".join(failures)
        assert not empty, "panels without data after traffic:\n" + "\n".join(empty)

        def values(title: str) -> dict[str, float]:
            found = {}
            for where, result in results.items():
                if where.split(" / ")[1] == title:
                    for series in result:
                        found[json.dumps(series["metric"], sort_keys=True)] = float(series["value"][1])
            return found

        for title in MUST_BE_POSITIVE:
            assert any(v > 0 for v in values(title).values()), (title, values(title))
        assert list(values("Active matchers").values()) == [1.0]
        holder = [r["metric"]["instance"] for w, res in results.items() if "/ Lease holder / " in w for r in res]
        assert matcher.url.removeprefix("http://") in holder
        errors = {json.loads(k).get("code") for k, v in values("Errors by code").items() if v > 0}
        assert "bad_json" in errors
        lines = {json.loads(k).get("line") for k in values("Waiting per line")}
        assert lines == {"general", "direct"}
        outcomes = {json.loads(k).get("outcome") for k, v in values("Offer outcomes").items() if v > 0}
        assert {"accepted", "declined"} <= outcomes, outcomes

        # The lease is held, so the no-matcher alert's expression is empty.
        no_matcher = next(q for q in alert_queries() if q.title == "AstroqNoActiveMatcher")
        assert await asyncio.to_thread(prometheus.query, no_matcher.promql) == []
    finally:
        prometheus.__exit__(None, None, None)
        await asyncio.to_thread(matcher.stop)
