"""The PostgreSQL store's schema migrations and SQL statements (`tokenward.stores.postgres`).

Kept apart so the store's module reads as Python: `MIGRATIONS` are appended to, never edited;
`Statements(schema)` composes every statement for one schema (`{s}`), safely quoted.
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg import sql

__all__ = ["LATEST", "MIGRATIONS", "Statements"]

#: (version, statements): `{s}` is the schema. Append new migrations; never edit old ones.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE {s}.records (key text PRIMARY KEY, version bigint NOT NULL "
            "CHECK (version >= 1), data jsonb NOT NULL, updated_at double precision NOT NULL)",
            "CREATE TABLE {s}.leases (key text PRIMARY KEY, owner text NOT NULL, "
            "expires_at timestamptz NOT NULL)",
        ],
    ),
    (
        2,
        [
            # The due-queue. Existing rows start with no due time: `tokenward refresher
            # --backfill` (or `Refresher.backfill()`) schedules them.
            "ALTER TABLE {s}.records ADD COLUMN due_at double precision, "
            "ADD COLUMN claimed_by text",
            "CREATE INDEX records_due_at ON {s}.records (due_at) WHERE due_at IS NOT NULL",
        ],
    ),
]
MIGRATIONS.append(
    (
        3,
        [
            # Liveness (who holds a lease, as another process can check) and in-flight records
            # (a refresh token sent and not yet answered), see tokenward.liveness.
            "ALTER TABLE {s}.leases ADD COLUMN holder text",
            "CREATE TABLE {s}.in_flight (key text PRIMARY KEY, owner text NOT NULL, "
            "fingerprint text NOT NULL, deadline timestamptz NOT NULL, holder text)",
        ],
    )
)
LATEST = MIGRATIONS[-1][0]


class Statements:
    """Every statement of the store for one schema (`{s}`), composed once and safely quoted."""

    def __init__(self, schema: str) -> None:
        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(s=sql.Identifier(schema))

        self.registry = sql.Literal(f"{schema}.schema_migrations")
        self._migrations(q)
        self._records(q)
        self._leases(q)
        self._in_flight(q)
        self._compound(q)

    def _migrations(self, q: Callable[[str], sql.Composed]) -> None:
        """The migrations registry and the migrations themselves."""
        self.current = q("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations")
        self.create_schema = q("CREATE SCHEMA IF NOT EXISTS {s}")
        self.create_registry = q(
            "CREATE TABLE IF NOT EXISTS {s}.schema_migrations (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        self.record_migration = q("INSERT INTO {s}.schema_migrations (version) VALUES (%s)")
        self.migrations = [(version, [q(s) for s in steps]) for version, steps in MIGRATIONS]

    def _records(self, q: Callable[[str], sql.Composed]) -> None:
        """Records and the due-queue."""
        self.load = q("SELECT version, data FROM {s}.records WHERE key = %s")
        self.insert = q(
            "INSERT INTO {s}.records (key, version, data, updated_at, due_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING"
        )
        self.update = q(
            "UPDATE {s}.records SET version = %s, data = %s, updated_at = %s, due_at = %s, "
            "claimed_by = NULL WHERE key = %s AND version = %s"
        )
        self.schedule = q("UPDATE {s}.records SET due_at = %s WHERE key = %s")
        self.claim = q(
            "UPDATE {s}.records AS r SET due_at = %s, claimed_by = %s FROM ("
            "SELECT key FROM {s}.records WHERE due_at <= %s ORDER BY due_at LIMIT %s "
            "FOR UPDATE SKIP LOCKED) AS due WHERE r.key = due.key RETURNING r.key"
        )
        self.delete = q(
            "WITH lease AS (DELETE FROM {s}.leases WHERE key = %(k)s), "
            "flight AS (DELETE FROM {s}.in_flight WHERE key = %(k)s) "
            "DELETE FROM {s}.records WHERE key = %(k)s"
        )
        self.keys = q("SELECT key FROM {s}.records WHERE starts_with(key, %s)")

    def _leases(self, q: Callable[[str], sql.Composed]) -> None:
        """Leases and liveness."""
        self.acquire = q(
            "INSERT INTO {s}.leases AS leases (key, owner, expires_at, holder) "
            "VALUES (%s, %s, now() + make_interval(secs => %s), %s) "
            "ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, "
            "expires_at = EXCLUDED.expires_at, holder = EXCLUDED.holder "
            "WHERE leases.owner = EXCLUDED.owner OR leases.expires_at < now()"
        )
        self.renew = q(
            "UPDATE {s}.leases SET expires_at = now() + make_interval(secs => %s) "
            "WHERE key = %s AND owner = %s AND expires_at > now()"
        )
        self.release = q("DELETE FROM {s}.leases WHERE key = %s AND owner = %s")
        self.take_over = q(
            "UPDATE {s}.leases SET owner = %s, expires_at = now() + make_interval(secs => %s), "
            "holder = %s WHERE key = %s AND owner = %s"
        )
        self.holder = q(
            "SELECT owner, extract(epoch FROM expires_at - now())::float8, holder "
            "FROM {s}.leases WHERE key = %s AND expires_at > now()"
        )

    def _in_flight(self, q: Callable[[str], sql.Composed]) -> None:
        """In-flight records."""
        self.mark = q(
            "INSERT INTO {s}.in_flight AS f (key, owner, fingerprint, deadline, holder) "
            "VALUES (%s, %s, %s, now() + make_interval(secs => %s), %s) "
            "ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, "
            "fingerprint = EXCLUDED.fingerprint, deadline = EXCLUDED.deadline, "
            "holder = EXCLUDED.holder"
        )
        self.in_flight = q(
            "SELECT owner, extract(epoch FROM deadline - now())::float8, holder, fingerprint "
            "FROM {s}.in_flight WHERE key = %s AND deadline > now()"
        )
        self.clear = q("DELETE FROM {s}.in_flight WHERE key = %s AND owner = %s")
        self.advisory_held = q(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = %s::oid AND objid = %s::oid AND objsubid = 1)"
        )

    def _compound(self, q: Callable[[str], sql.Composed]) -> None:
        """The compound operations (`begin_refresh`, `finish_refresh`, `claim_due_records`)."""
        self.begun = q(
            "SELECT r.version, r.data, f.owner, "
            "extract(epoch FROM f.deadline - now())::float8, f.holder, f.fingerprint "
            "FROM (SELECT 1) AS one "
            "LEFT JOIN {s}.records AS r ON r.key = %(k)s "
            "LEFT JOIN {s}.in_flight AS f ON f.key = %(k)s AND f.deadline > now()"
        )
        self.mark_if = q(
            "INSERT INTO {s}.in_flight AS f (key, owner, fingerprint, deadline, holder) "
            "SELECT %(k)s, %(o)s, %(fp)s, now() + make_interval(secs => %(ttl)s), %(h)s "
            "WHERE EXISTS (SELECT 1 FROM {s}.leases WHERE key = %(k)s AND owner = %(o)s "
            "AND expires_at > now()) "
            "AND EXISTS (SELECT 1 FROM {s}.records WHERE key = %(k)s AND version = %(v)s) "
            "AND NOT EXISTS (SELECT 1 FROM {s}.in_flight WHERE key = %(k)s AND owner <> %(o)s "
            "AND fingerprint = %(fp)s AND deadline > now()) "
            "ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, "
            "fingerprint = EXCLUDED.fingerprint, deadline = EXCLUDED.deadline, "
            "holder = EXCLUDED.holder"
        )
        done = (
            "flight AS (DELETE FROM {s}.in_flight WHERE key = %(k)s AND owner = %(o)s "
            "AND %(clear)s AND EXISTS (SELECT 1 FROM cas)), "
            "lease AS (DELETE FROM {s}.leases WHERE key = %(k)s AND owner = %(o)s "
            "AND EXISTS (SELECT 1 FROM cas)) SELECT count(*) FROM cas"
        )
        self.finish_insert = q(
            "WITH cas AS (INSERT INTO {s}.records (key, version, data, updated_at, due_at) "
            "VALUES (%(k)s, %(v)s, %(data)s, %(at)s, %(due)s) ON CONFLICT (key) DO NOTHING "
            "RETURNING 1), " + done
        )
        self.finish_update = q(
            "WITH cas AS (UPDATE {s}.records SET version = %(v)s, data = %(data)s, "
            "updated_at = %(at)s, due_at = %(due)s, claimed_by = NULL "
            "WHERE key = %(k)s AND version = %(expected)s RETURNING 1), " + done
        )
        self.claim_records = q(
            "UPDATE {s}.records AS r SET due_at = %s, claimed_by = %s FROM ("
            "SELECT key FROM {s}.records WHERE due_at <= %s ORDER BY due_at LIMIT %s "
            "FOR UPDATE SKIP LOCKED) AS due WHERE r.key = due.key "
            "RETURNING r.key, r.version, r.data"
        )
