"""
The SQLite manifest's posts and rewrite journal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from mirror.manifest.sqlite_conn import Base
from mirror.manifest.sqlite_rows import (
    PostState,
    RecordedSpan,
    Rewrite,
)
from mirror.models import Span

_POST_SQL = "SELECT * FROM posts WHERE path = ?"
_POSTS_IN_SQL = "SELECT * FROM posts WHERE path > ? AND path < ?"


class PostsMixin(Base):
    """Record what each post was, and the spans each rewrite of it replaced."""

    def record_post(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        inode: int,
        sha256: str,
        *,
        rewritten: bool = False,
        next_check: float | None = None,
        mode: str | None = None,
    ) -> None:
        """Record a post as scanned now (and as rewritten now, with ``rewritten``)."""
        now = self._clock()
        sql = """INSERT INTO posts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE
            SET size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
            sha256 = excluded.sha256, scanned_at = excluded.scanned_at,
            rewritten_at = COALESCE(excluded.rewritten_at, posts.rewritten_at),
            next_check = excluded.next_check, mode = excluded.mode"""
        stamp = now if rewritten else None
        values = (path, size, mtime_ns, inode, sha256, now, stamp, next_check, mode)
        with self.transaction() as conn, self._errors("recording a post"):
            conn.execute(sql, values)

    def record_posts(
        self, rows: Iterable[tuple[str, int, int, int, str, float | None, str | None]]
    ) -> None:
        """Record finished posts: (path, size, mtime_ns, inode, sha256, next_check, mode) each."""
        now = self._clock()
        sql = """INSERT INTO posts VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)
            ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
            inode = excluded.inode, sha256 = excluded.sha256, scanned_at = excluded.scanned_at,
            next_check = excluded.next_check, mode = excluded.mode"""
        values = [
            (p, size, mtime, ino, sha, now, due, mode)
            for p, size, mtime, ino, sha, due, mode in rows
        ]
        with self.transaction() as conn, self._errors("recording posts"):
            conn.executemany(sql, values)

    def post_states_in(self, folder: str) -> dict[str, PostState]:
        """Every recorded post under ``folder`` (subfolders included), by path, in one query."""
        low, high = folder + "/", folder + "0"  # "0" follows "/": the range is the prefix
        with self._lock, self._errors("reading posts"):
            rows = self.conn.execute(_POSTS_IN_SQL, (low, high)).fetchall()
        return {row[0]: PostState(*row) for row in rows}

    def post_state(self, path: str) -> PostState | None:
        """Return what ``path`` looked like when last recorded, or None."""
        # Called once per post by the no-op re-run: the error wrapper is entered only on error.
        try:
            with self._lock:
                values = self.conn.execute(_POST_SQL, (path,)).fetchone()
        except sqlite3.Error:
            with self._errors("reading a post"):
                values = self.conn.execute(_POST_SQL, (path,)).fetchone()
        return None if values is None else PostState(*values)

    def record_spans(
        self,
        post: str,
        spans: Sequence[Span],
        sources: Sequence[str | None],
        *,
        before_sha256: str | None = None,
        after_sha256: str | None = None,
    ) -> int | None:
        """
        Record one rewrite of ``post``; return its generation, or None when ``spans`` is empty.

        ``sources[i]`` is the URL ``spans[i]`` was made for. A rewrite from the same
        ``before_sha256`` as the newest generation replaces that generation.
        """
        if len(spans) != len(sources):
            raise ValueError(f"{len(spans)} spans but {len(sources)} sources for {post}")
        if not spans:
            return None
        with self.transaction() as conn, self._errors("recording spans"):
            newest = conn.execute(
                "SELECT generation, before_sha256 FROM rewrites WHERE post = ? "
                "ORDER BY generation DESC LIMIT 1",
                (post,),
            ).fetchone()
            generation = 1 if newest is None else newest[0] + 1
            if newest is not None and before_sha256 is not None and newest[1] == before_sha256:
                generation = newest[0]
                conn.execute(
                    "DELETE FROM rewrites WHERE post = ? AND generation = ?", (post, generation)
                )
            conn.execute(
                "INSERT INTO rewrites VALUES (?, ?, ?, ?, ?)",
                (post, generation, before_sha256, after_sha256, self._clock()),
            )
            conn.executemany(
                "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (post, generation, seq, span.offset, span.old, span.new, source)
                    for seq, (span, source) in enumerate(zip(spans, sources, strict=True))
                ],
            )
        return generation

    def spans_for(self, post: str) -> list[Rewrite]:
        """Return the rewrites of ``post``, newest first: the order to undo them in."""
        with self._lock, self._errors("reading spans"):
            heads = self.conn.execute(
                "SELECT generation, before_sha256, after_sha256, created FROM rewrites "
                "WHERE post = ? ORDER BY generation DESC",
                (post,),
            ).fetchall()
            spans: dict[int, list[RecordedSpan]] = {head[0]: [] for head in heads}
            sql = """SELECT generation, offset, old, new, source FROM spans WHERE post = ?
                ORDER BY generation, seq"""
            for generation, *rest in self.conn.execute(sql, (post,)):
                spans[generation].append(RecordedSpan(*rest))
        return [
            Rewrite(post, g, before, after, created, tuple(spans[g]))
            for g, before, after, created in heads
        ]

    def rewritten_posts(self) -> list[str]:
        """Return the key of every post with a recorded rewrite, sorted by code point."""
        with self._lock, self._errors("reading spans"):
            rows = self.conn.execute("SELECT DISTINCT post FROM rewrites").fetchall()
        return sorted(key for (key,) in rows)

    def forget_rewrite(self, post: str, generation: int) -> None:
        """Drop one generation of ``post``'s rewrites, once it is undone or never landed."""
        with self.transaction() as conn, self._errors("forgetting a rewrite"):
            conn.execute(
                "DELETE FROM rewrites WHERE post = ? AND generation = ?", (post, generation)
            )
