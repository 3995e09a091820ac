"""docker-compose.yml, .env.example and the Dockerfile.

No Docker engine runs here, so nothing is built or started: `docker compose
config` validates the compose file offline (when the compose plugin is there;
scripts/ensure-ops-tools tries to provide it), and the rest is read as text.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

ASTROQ_SERVICES = ("matcher1", "matcher2", "gateway1", "gateway2")


def compose_available() -> str | None:
    """Why `docker compose` cannot run, or None when it can."""
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        return "the docker client is not installed"
    if result.returncode != 0:
        return f"the docker compose plugin is missing ({result.stderr.strip()[:200]})"
    return None


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as `docker compose config` resolves it with .env.example."""
    reason = compose_available()
    if reason:
        pytest.skip(f"docker compose config cannot run here: {reason}")
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_compose_config_is_valid() -> None:
    reason = compose_available()
    if reason:
        pytest.skip(f"docker compose config cannot run here: {reason}")
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    reason = compose_available()
    if reason:
        pytest.skip(f"docker compose config cannot run here: {reason}")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "in .env" in result.stderr


def test_services_and_their_health(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) >= {
        "postgres", "redis", "migrate", *ASTROQ_SERVICES, "nginx", "prometheus", "grafana"
    }
    assert re.fullmatch(r"postgres:(16|17|18)(\..*)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7(\..*)?", services["redis"]["image"])
    for name in ("postgres", "redis", "nginx", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    for name in ASTROQ_SERVICES:
        service = services[name]
        # The image's HEALTHCHECK applies; nothing here may switch it off.
        assert not service.get("healthcheck", {}).get("disable"), name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        env = service["environment"]
        assert env["ASTROQ_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["ASTROQ_DATABASE_URL"]
        assert env["ASTROQ_REDIS_URL"].startswith("redis://redis:6379")
        assert len(env["ASTROQ_JWT_SECRET"].encode()) >= 32
        assert env["ASTROQ_HOST"] == "0.0.0.0"
        # Secrets of other services stay out of astroq's containers.
        assert not {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} & set(env)
    assert [services[m]["command"] for m in ("matcher1", "matcher2")] == [["matcher"], ["matcher"]]
    assert [services[g]["command"] for g in ("gateway1", "gateway2")] == [["serve"], ["serve"]]
    assert services["migrate"]["command"] == ["migrate"]
    for gateway in ("gateway1", "gateway2"):
        assert services["nginx"]["depends_on"][gateway]["condition"] == "service_healthy"
        # Client addresses come from nginx's X-Forwarded-For (login throttling).
        assert services[gateway]["environment"]["FORWARDED_ALLOW_IPS"] == "*"
        assert "ports" not in services[gateway]


def test_mounts_point_at_files_in_the_repository(resolved: dict[str, Any]) -> None:
    targets: dict[str, str] = {}
    for service in resolved["services"].values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.exists(), f"{source} is mounted but missing"
                assert volume.get("read_only"), f"{source} should be mounted read-only"
                targets[volume["target"]] = str(source.relative_to(ROOT))
    assert targets == {
        "/etc/nginx/nginx.conf": "deploy/nginx.conf",
        "/etc/prometheus/prometheus.yml": "deploy/prometheus.yml",
        "/etc/prometheus/alerts.yml": "deploy/alerts.yml",
        "/etc/grafana/provisioning": "deploy/grafana/provisioning",
        "/var/lib/grafana/dashboards": "deploy/grafana/dashboards",
    }


def test_env_example_has_placeholders_for_every_secret() -> None:
    values = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    for key in ("ASTROQ_JWT_SECRET", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ASTROQ_ADMIN_PASSWORD"):
        assert values[key].startswith("change-me"), key
    # Every ${VAR} that compose requires has a line in .env.example.
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required <= set(values), required - set(values)
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected"
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for k, rest in instructions if k == "ARG" and "=" in rest}
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the image must not run as root"
    last = {keyword: rest for keyword, rest in instructions}
    assert json.loads(last["ENTRYPOINT"]) == ["astroq"]
    assert json.loads(last["CMD"]) == ["serve"]
    assert "ASTROQ_HOST=0.0.0.0" in " ".join(rest for k, rest in instructions if k == "ENV")
    health = last["HEALTHCHECK"]
    assert "curl" not in health and "urllib" in health and "/healthz" in health


def test_healthcheck_script_picks_the_right_port(tmp_path: Path) -> None:
    """The HEALTHCHECK's Python, run here against a fake /proc/1/cmdline."""
    health = dict(dockerfile_instructions())["HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    source = command[2].replace("'/proc/1/cmdline'", "CMDLINE").replace(
        "urllib.request.urlopen(", "print("
    ).replace(", timeout=2)", ")")
    for argv, env, expected in (
        (b"/opt/astroq/bin/python\0/opt/astroq/bin/astroq\0serve\0", {}, "8000"),
        (b"/opt/astroq/bin/python\0/opt/astroq/bin/astroq\0matcher\0", {}, "9100"),
        (b"python\0astroq\0matcher\0", {"ASTROQ_METRICS_PORT": "9200"}, "9200"),
        (b"python\0astroq\0serve\0", {"ASTROQ_PORT": "8100"}, "8100"),
    ):
        cmdline = tmp_path / "cmdline"
        cmdline.write_bytes(argv)
        result = subprocess.run(
            ["python3", "-c", f"CMDLINE = {str(cmdline)!r}\n{source}"],
            capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **env},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"http://127.0.0.1:{expected}/healthz", shlex.join(argv.decode().split("\0"))
