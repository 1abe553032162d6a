"""
The PostgreSQL manifest's schema: its migrations, applied in order by
:mod:`mirror.manifest.postgres` and recorded in the table ``mirror_schema``.

The tables mirror the SQLite schema (:mod:`mirror.manifest.sqlite`) with BIGINT, DOUBLE PRECISION
(Unix seconds) and TEXT, and ``attempts`` as JSONB. Keys and every column compared by range or
order are ``COLLATE "C"``, so they sort by code point as SQLite's BINARY does whatever the
database's locale (``post_states_in`` takes a prefix as a range).

The change feed: a single-row ``catalog_counter`` counts the transactions that changed what the
catalog shows. A transaction's first such change takes the row's lock and bumps ``seq`` (and
NOTIFYs ``mirror_catalog``, which PostgreSQL delivers at commit); every source it changes is
logged in ``catalog_log`` under that ``seq``. The lock is held to commit, so ``seq`` grows in
commit order and a reader's snapshot of the counter is exactly the cursor its snapshot of the log
is complete to. The writers of ``sources`` and ``served`` take the lock before their first
read, which also makes their read-merge-write safe beside other writers. Every 64th transaction
trims the log to its newest 65,536 entries and moves ``horizon`` up.
"""

from __future__ import annotations

# Append only: a released migration is never edited; its index + 1 is the schema version.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE objects (
            sha256 TEXT COLLATE "C" PRIMARY KEY, ext TEXT NOT NULL, bytes BIGINT NOT NULL,
            format TEXT, width BIGINT, height BIGINT, created DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE sources (
            source TEXT COLLATE "C" PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('mirrored', 'failed', 'blocked', 'skipped')),
            reason TEXT, sha256 TEXT COLLATE "C" REFERENCES objects (sha256),
            fetched_from TEXT, via TEXT, attempts JSONB NOT NULL DEFAULT '[]', etag TEXT,
            last_modified TEXT, first_seen DOUBLE PRECISION NOT NULL,
            last_attempt DOUBLE PRECISION, next_attempt DOUBLE PRECISION,
            failures BIGINT NOT NULL DEFAULT 0,
            CHECK (status <> 'mirrored' OR sha256 IS NOT NULL))""",
        "CREATE INDEX sources_status ON sources (status)",
        "CREATE INDEX sources_sha256 ON sources (sha256)",
        """CREATE TABLE posts (
            path TEXT COLLATE "C" PRIMARY KEY, size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL,
            inode BIGINT NOT NULL, sha256 TEXT NOT NULL, scanned_at DOUBLE PRECISION NOT NULL,
            rewritten_at DOUBLE PRECISION, next_check DOUBLE PRECISION, mode TEXT)""",
        """CREATE TABLE rewrites (
            post TEXT COLLATE "C" NOT NULL, generation BIGINT NOT NULL, before_sha256 TEXT,
            after_sha256 TEXT, created DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (post, generation))""",
        """CREATE TABLE spans (
            post TEXT COLLATE "C" NOT NULL, generation BIGINT NOT NULL, seq BIGINT NOT NULL,
            "offset" BIGINT NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL, source TEXT,
            PRIMARY KEY (post, generation, seq),
            FOREIGN KEY (post, generation) REFERENCES rewrites (post, generation)
                ON DELETE CASCADE)""",
        """CREATE TABLE served (
            source TEXT COLLATE "C" PRIMARY KEY,
            sha256 TEXT COLLATE "C" NOT NULL REFERENCES objects (sha256),
            last_served DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX served_sha256 ON served (sha256)",
        """CREATE TABLE hosts (
            host TEXT COLLATE "C" PRIMARY KEY, profile TEXT,
            updated DOUBLE PRECISION NOT NULL)""",
    ),
    (
        """CREATE TABLE catalog_counter (
            one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), seq BIGINT NOT NULL,
            horizon BIGINT NOT NULL, xid BIGINT)""",
        "INSERT INTO catalog_counter VALUES (TRUE, 0, 0, NULL)",
        """CREATE TABLE catalog_log (
            seq BIGINT NOT NULL, source TEXT COLLATE "C" NOT NULL, PRIMARY KEY (seq, source))""",
        """CREATE FUNCTION mirror_log_changes(changed TEXT[]) RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            n BIGINT;
            cut BIGINT;
        BEGIN
            IF coalesce(cardinality(changed), 0) = 0 THEN
                RETURN;
            END IF;
            UPDATE catalog_counter SET seq = seq + 1, xid = txid_current()
                WHERE xid IS DISTINCT FROM txid_current() RETURNING seq INTO n;
            IF FOUND THEN
                PERFORM pg_notify('mirror_catalog', n::text);
                IF n % 64 = 0 THEN
                    SELECT seq INTO cut FROM catalog_log ORDER BY seq DESC OFFSET 65536 LIMIT 1;
                    IF cut IS NOT NULL THEN
                        DELETE FROM catalog_log WHERE seq <= cut;
                        UPDATE catalog_counter SET horizon = cut;
                    END IF;
                END IF;
            ELSE
                SELECT seq INTO n FROM catalog_counter;
            END IF;
            INSERT INTO catalog_log SELECT n, s FROM unnest(changed) AS s ON CONFLICT DO NOTHING;
        END $$""",
        """CREATE FUNCTION mirror_rows_added() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM mirror_log_changes(ARRAY(SELECT source FROM new_rows));
            RETURN NULL;
        END $$""",
        """CREATE FUNCTION mirror_rows_removed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM mirror_log_changes(ARRAY(SELECT source FROM old_rows));
            RETURN NULL;
        END $$""",
        # Only what the catalog shows counts: a refreshed failure or a touch changes nothing.
        """CREATE FUNCTION mirror_sources_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM mirror_log_changes(ARRAY(
                SELECT n.source FROM new_rows n JOIN old_rows o ON o.source = n.source
                WHERE n.status IS DISTINCT FROM o.status OR n.sha256 IS DISTINCT FROM o.sha256));
            RETURN NULL;
        END $$""",
        """CREATE FUNCTION mirror_served_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM mirror_log_changes(ARRAY(
                SELECT n.source FROM new_rows n JOIN old_rows o ON o.source = n.source
                WHERE n.sha256 IS DISTINCT FROM o.sha256));
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER sources_log_insert AFTER INSERT ON sources
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION mirror_rows_added()""",
        """CREATE TRIGGER sources_log_update AFTER UPDATE ON sources
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION mirror_sources_updated()""",
        """CREATE TRIGGER sources_log_delete AFTER DELETE ON sources
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION mirror_rows_removed()""",
        """CREATE TRIGGER served_log_insert AFTER INSERT ON served
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION mirror_rows_added()""",
        """CREATE TRIGGER served_log_update AFTER UPDATE ON served
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION mirror_served_updated()""",
        """CREATE TRIGGER served_log_delete AFTER DELETE ON served
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION mirror_rows_removed()""",
        """CREATE TABLE pins (
            sha256 TEXT COLLATE "C" NOT NULL, holder TEXT NOT NULL,
            until DOUBLE PRECISION NOT NULL, PRIMARY KEY (sha256, holder))""",
        "CREATE INDEX pins_holder ON pins (holder)",
        """CREATE TABLE leases (
            key BYTEA PRIMARY KEY, holder TEXT NOT NULL, until DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE negative (
            key BYTEA PRIMARY KEY, until DOUBLE PRECISION NOT NULL, count BIGINT NOT NULL,
            status INTEGER NOT NULL, reason TEXT NOT NULL)""",
        "CREATE INDEX negative_until ON negative (until)",
        # Who holds the store lock (a session advisory lock), for the refusal message.
        """CREATE TABLE store_lock (
            one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), pid BIGINT NOT NULL,
            host TEXT NOT NULL, command TEXT NOT NULL, since DOUBLE PRECISION NOT NULL)""",
    ),
    (
        # One rewrite's journal in one statement (record_spans): the newest generation of the
        # post, locked; the same generation again when its before-hash is this one's (a rerun of
        # a rewrite that did not land), else the next; then its head and its spans.
        """CREATE FUNCTION mirror_record_spans(
            p TEXT, before TEXT, after TEXT, created DOUBLE PRECISION,
            offsets BIGINT[], olds TEXT[], news TEXT[], sources TEXT[]
        ) RETURNS BIGINT LANGUAGE plpgsql AS $$
        DECLARE
            g BIGINT;
            newest_before TEXT;
        BEGIN
            SELECT generation, before_sha256 INTO g, newest_before FROM rewrites
                WHERE post = p ORDER BY generation DESC LIMIT 1 FOR UPDATE;
            IF g IS NULL THEN
                g := 1;
            ELSIF before IS NOT NULL AND newest_before = before THEN
                DELETE FROM rewrites WHERE post = p AND generation = g;
            ELSE
                g := g + 1;
            END IF;
            INSERT INTO rewrites VALUES (p, g, before, after, created);
            INSERT INTO spans SELECT p, g, seq - 1, o, a, b, s
                FROM unnest(offsets, olds, news, sources) WITH ORDINALITY AS u(o, a, b, s, seq);
            RETURN g;
        END $$""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
