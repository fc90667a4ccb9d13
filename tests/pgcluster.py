"""A throwaway PostgreSQL cluster for the tests and the registry benchmark.

``initdb`` into a fresh temporary folder, ``pg_ctl start`` listening only on a Unix socket in
that folder (no TCP port, so parallel clusters never collide), one database per caller, and
``pg_ctl stop`` plus the folder removed at the end. PostgreSQL refuses to run as root: as root,
the server runs as the ``postgres`` system user (Debian's ``postgresql`` package creates it),
which owns the folder. Durability is switched off (fsync, full-page writes): the data is
thrown away anyway.

The binaries are found on $PG_BINDIR, the PATH, or Debian's /usr/lib/postgresql/<version>/bin;
``make test-deps`` (and so ``make test``) installs Debian's ``postgresql`` when none is there.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "lineage"
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
}


class ClusterError(RuntimeError):
    """PostgreSQL could not be started (the message says why)."""


def find_bindir() -> Path:
    """The folder with ``initdb`` and ``pg_ctl``."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(str(Path(initdb).parent))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise ClusterError(
        "PostgreSQL server binaries not found (initdb, pg_ctl): run `make test-deps` "
        "(Debian's postgresql) or set PG_BINDIR"
    )


class Cluster:
    """A running throwaway cluster; ``url(name)`` is an SQLAlchemy URL of database ``name``."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="lineage-pg-"))
        self.data = self.folder / "data"
        self._as_server_user: list[str] = []
        if os.geteuid() == 0:
            try:
                server = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ClusterError(
                    "running as root, PostgreSQL needs the unprivileged 'postgres' user "
                    "(Debian's postgresql package creates it): run `make test-deps`"
                ) from exc
            os.chown(self.folder, server.pw_uid, server.pw_gid)
            self._as_server_user = ["runuser", "-u", "postgres", "--"]
        try:
            self._server(
                "initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "--no-sync",
                "--no-locale", "-E", "UTF8", "--no-instructions",
            )  # fmt: skip
            options = " ".join(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())
            options += f" -c unix_socket_directories={self.folder}"
            log = self.folder / "server.log"
            self._server("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "start")
        except ClusterError:
            self.stop()
            raise

    def _server(self, tool: str, *args: object, check: bool = True) -> None:
        cmd = [*self._as_server_user, str(self.bindir / tool), *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise ClusterError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}{tail}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.folder}"

    def _admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(
            host=str(self.folder), user=SUPERUSER, dbname=database, autocommit=True
        ) as conn:
            conn.execute("SET lock_timeout = '10s'")  # a test that left a transaction open
            conn.execute(sql)  # type: ignore[arg-type]

    def empty_tables(self, database: str) -> None:
        """Every table of ``database`` emptied and its ids restarted, the schema kept (much
        faster than a new database: CREATE DATABASE checkpoints the whole cluster)."""
        self._admin(
            "DO $$ DECLARE t text; BEGIN "
            "SELECT string_agg(quote_ident(tablename), ', ') INTO t FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename NOT IN ('alembic_version', "
            "'registry_state'); "
            "EXECUTE 'TRUNCATE ' || t || ' RESTART IDENTITY CASCADE'; END $$",
            database,
        )

    def create_database(self, name: str, template: str = "template1") -> str:
        """A new database, a copy of ``template`` (default: empty); returns its URL."""
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._server("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
