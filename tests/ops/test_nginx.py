"""deploy/nginx.conf with the real nginx: the config as deployed, with only its
addresses and file paths swapped for local ones, must pass `nginx -t` and carry
WebSocket sessions to two upstreams.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        pytest.fail("nginx not found: run scripts/ensure-ops-tools (installs prometheus and nginx)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout_s} s")


def render_config(workdir: Path, upstream_ports: list[int], listen_port: int) -> Path:
    """deploy/nginx.conf with local upstreams, listen port and tmp paths.

    Each substitution must match exactly as often as expected, so a change of
    the deployed file's shape fails here instead of testing something else.
    """
    text = NGINX_CONF.read_text()

    def sub(pattern: str, replacement: str, expected: int = 1) -> None:
        nonlocal text
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == expected, f"deploy/nginx.conf: {pattern!r} matched {count} times, expected {expected}"

    # Workers run as root here: the temp and log paths are in a root-owned tmp dir.
    sub(r"^user\s+[^;]+;", "user root;" if os.geteuid() == 0 else "")
    sub(r"^pid\s+[^;]+;", f"pid {workdir}/nginx.pid;")
    sub(r"^error_log\s+[^;]+;", f"error_log {workdir}/error.log info;")
    # Which upstream served each request, so a test can tell the gateways apart.
    sub(
        r"^(\s*)access_log\s+[^;]+;",
        rf"\1log_format upstreams '$request_uri $status $upstream_addr';\n"
        rf"\1access_log {workdir}/access.log upstreams;",
    )
    sub(r"^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{listen_port};")
    ports = iter(upstream_ports)
    text, count = re.subn(r"server\s+gateway\d+:8000", lambda _: f"server 127.0.0.1:{next(ports)}", text)
    assert count == len(upstream_ports) == 2, f"deploy/nginx.conf has {count} gateway servers, expected 2"
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    sub(r"^http\s*\{", "http {\n" + temp)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def nginx_test(config: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(workdir), "-c", str(config)],
        capture_output=True, text=True, timeout=30,
    )


class Nginx:
    """nginx in the foreground on a free port, in front of the given upstreams."""

    def __init__(self, workdir: Path, upstream_ports: list[int]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = render_config(workdir, upstream_ports, self.port)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Blocks until nginx listens; async tests call it in a thread."""
        check = nginx_test(self.config, self.workdir)
        assert check.returncode == 0, check.stderr
        with (self.workdir / "nginx.out").open("wb") as out:
            self.process = subprocess.Popen(
                [nginx_binary(), "-p", str(self.workdir), "-c", str(self.config), "-g", "daemon off;"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def upstreams(self, path: str, count: int, timeout_s: float = 10) -> list[str]:
        """Upstream addresses of the first `count` logged requests for `path`
        (a WebSocket is logged when it closes)."""
        log = self.workdir / "access.log"
        deadline = time.monotonic() + timeout_s
        while True:
            lines = log.read_text().splitlines() if log.exists() else []
            found = [line.split()[2] for line in lines if line.split()[0] == path]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@contextmanager
def running_nginx(workdir: Path, upstream_ports: list[int]) -> Iterator[Nginx]:
    nginx = Nginx(workdir, upstream_ports)
    try:
        nginx.start()
        yield nginx
    finally:
        nginx.stop()


# A stand-in gateway: answers GET /healthz and /metrics, and on /ws echoes each
# text frame wrapped with its own name, so a test can tell which upstream served.
STAND_IN = r"""
import json, sys
from http import HTTPStatus
from websockets.sync.server import serve

name, port = sys.argv[1], int(sys.argv[2])

def process_request(connection, request):
    if request.path in ("/healthz", "/metrics"):
        return connection.respond(HTTPStatus.OK, f"{name} {request.path}\n")
    return None

def handler(ws):
    for message in ws:
        ws.send(json.dumps({"upstream": name, "echo": message,
                            "upgrade": ws.request.headers.get("Upgrade"),
                            "forwarded_for": ws.request.headers.get("X-Forwarded-For")}))

with serve(handler, "127.0.0.1", port, process_request=process_request) as server:
    server.serve_forever()
"""


@contextmanager
def stand_in_gateway(name: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, name, str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield port, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


# ------------------------------------------------------------------ tests


def test_config_passes_websockets() -> None:
    text = NGINX_CONF.read_text()
    ws = re.search(r"location /ws \{(.*?)\}", text, flags=re.DOTALL)
    assert ws, "deploy/nginx.conf has no location /ws"
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", ws.group(1))
    assert read_timeout and int(read_timeout.group(1)) >= 600
    assert "proxy_http_version 1.1;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    assert re.search(r"map \$http_upgrade \$connection_upgrade", text)
    # nginx drops every inherited proxy_set_header in a location that sets one.
    for location in re.findall(r"location [^{]*\{(.*?)\}", text, flags=re.DOTALL):
        assert "proxy_set_header" not in location


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    config = render_config(tmp_path, [free_port(), free_port()], free_port())
    result = nginx_test(config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_websockets_and_http_pass_through_to_both_upstreams(tmp_path: Path) -> None:
    with ExitStack() as stack:
        (port_a, _), (port_b, process_b) = (
            stack.enter_context(stand_in_gateway("a")),
            stack.enter_context(stand_in_gateway("b")),
        )
        nginx = stack.enter_context(running_nginx(tmp_path, [port_a, port_b]))
        nginx_port = nginx.port
        base = f"http://127.0.0.1:{nginx_port}"

        status, body = http_get(f"{base}/healthz")
        assert status == 200 and body.split()[0] in {"a", "b"}
        # The edge never publishes a gateway's metrics.
        assert http_get(f"{base}/metrics")[0] == 404

        # least_conn: two sockets open at once land on different gateways.
        served = set()
        # A client's own X-Forwarded-For is replaced by the address nginx sees.
        forged = {"X-Forwarded-For": "203.0.113.9"}
        with connect(f"ws://127.0.0.1:{nginx_port}/ws", open_timeout=5) as first, connect(
            f"ws://127.0.0.1:{nginx_port}/ws", open_timeout=5, additional_headers=forged
        ) as second:
            for ws, text in ((first, '{"type": "ping"}'), (second, '{"type": "ping", "n": 2}')):
                ws.send(text)
                answer = json.loads(ws.recv(timeout=5))
                assert answer["echo"] == text
                assert answer["upgrade"].lower() == "websocket"
                assert answer["forwarded_for"] == "127.0.0.1"
                served.add(answer["upstream"])
            # A socket idle for longer than nginx's default 60 s read timeout
            # would be cut; here it is enough that it stays open across a pause.
            time.sleep(1)
            first.send("again")
            assert json.loads(first.recv(timeout=5))["echo"] == "again"
        assert served == {"a", "b"}
        assert sorted(nginx.upstreams("/ws", 2)) == sorted(f"127.0.0.1:{p}" for p in (port_a, port_b))

        # One gateway dies: new sockets and requests go to the other one.
        process_b.kill()
        process_b.wait(10)
        for _ in range(4):
            with connect(f"ws://127.0.0.1:{nginx_port}/ws", open_timeout=5) as ws:
                ws.send("x")
                assert json.loads(ws.recv(timeout=5))["upstream"] == "a"
            assert http_get(f"{base}/healthz") == (200, "a /healthz\n")


async def test_session_through_nginx_to_two_live_gateways(service: Any, tmp_path: Path) -> None:
    """Two live gateways behind nginx: one account's two sockets land on
    different gateways; auth, ping/pong and a request acknowledged go through
    nginx, and the other socket hears of the request through Redis."""
    second = await service.start_gateway()
    ports = [urllib.parse.urlsplit(url).port for url in (service.base_url, second)]
    nginx = Nginx(tmp_path, [port for port in ports if port is not None])
    await asyncio.to_thread(nginx.start)
    try:
        base = f"http://127.0.0.1:{nginx.port}"
        ready = await service.http.get(f"{base}/readyz")
        assert ready.status_code == 200, ready.text

        account = await service.user()
        first = await service.connect(account, url=f"ws://127.0.0.1:{nginx.port}/ws")
        other = await service.connect(account, url=f"ws://127.0.0.1:{nginx.port}/ws")
        for client in (first, other):
            await client.send({"type": "ping"})
            await client.wait_for("pong")

        ack = await first.ok({"type": "request", "kind": "chat", "astrologer_id": None})
        assert ack["request_id"]
        await first.wait_for("queued", request_id=ack["request_id"])
        await other.wait_for("queued", timeout=10, request_id=ack["request_id"])
        await other.ok({"type": "cancel", "request_id": ack["request_id"]})
        await first.wait_for("cancelled", timeout=10, request_id=ack["request_id"], reason="user")

        await first.close()
        await other.close()
        used = await asyncio.to_thread(nginx.upstreams, "/ws", 2)
        assert sorted(used) == sorted(f"127.0.0.1:{port}" for port in ports), used
    finally:
        await asyncio.to_thread(nginx.stop)
