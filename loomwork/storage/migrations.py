"""Versioned SQL migrations (`migrations/NNNN_name.sql`), applied once and recorded."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from loomwork.storage.database import Database

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant: serializes concurrent migrators (several servers starting at once).
_ADVISORY_LOCK_KEY = 0x4C4F4F4D


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file in version order; a gap or a stray file is an error."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {expected:04d} is missing (found {migration.version:04d})")
    return found


async def apply_migrations(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not yet recorded, each in its own transaction; return their versions."""
    migrations = load_migrations() if migrations is None else migrations
    applied: list[int] = []
    async with db.connection() as conn:
        await conn.execute("select pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            await conn.execute(
                """
                create table if not exists loomwork_migrations (
                    version integer primary key,
                    name text not null,
                    applied_at timestamptz not null default now()
                )
                """
            )
            cur = await conn.execute("select version from loomwork_migrations")
            done = {row["version"] for row in await cur.fetchall()}
            for migration in migrations:
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "insert into loomwork_migrations (version, name) values (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied.append(migration.version)
        finally:
            await conn.execute("select pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return applied
