"""
The PostgreSQL manifest's posts and rewrite journal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mirror.manifest.postgres_conn import (
    Base,
    _floats,
)
from mirror.manifest.sqlite import (
    PostState,
    RecordedSpan,
    Rewrite,
)
from mirror.models import Span

_POST_COLUMNS = "path, size, mtime_ns, inode, sha256, scanned_at, rewritten_at, next_check, mode"


class PostsMixin(Base):
    """Record what each post was, and the spans each rewrite of it replaced."""

    async def record_post(
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
        sql = f"""INSERT INTO posts ({_POST_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (path) DO UPDATE SET size = EXCLUDED.size,
            mtime_ns = EXCLUDED.mtime_ns, inode = EXCLUDED.inode, sha256 = EXCLUDED.sha256,
            scanned_at = EXCLUDED.scanned_at,
            rewritten_at = COALESCE(EXCLUDED.rewritten_at, posts.rewritten_at),
            next_check = EXCLUDED.next_check, mode = EXCLUDED.mode"""
        stamp = now if rewritten else None
        values = (path, size, mtime_ns, inode, sha256, now, stamp, next_check, mode)
        async with self._write("recording a post") as conn:
            await conn.execute(sql, values)

    async def record_posts(
        self, rows: Iterable[tuple[str, int, int, int, str, float | None, str | None]]
    ) -> None:
        """Record finished posts in one statement."""
        batch = list(rows)
        if not batch:
            return
        now = float(self._clock())
        paths, sizes, mtimes, inodes, shas, dues, modes = (
            list(c) for c in zip(*batch, strict=True)
        )
        sql = f"""INSERT INTO posts ({_POST_COLUMNS}) SELECT p, s, m, i, h, %s, NULL, d, o
            FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::int8[], %s::text[],
            %s::float8[], %s::text[]) AS u(p, s, m, i, h, d, o)
            ON CONFLICT (path) DO UPDATE SET size = EXCLUDED.size,
            mtime_ns = EXCLUDED.mtime_ns, inode = EXCLUDED.inode, sha256 = EXCLUDED.sha256,
            scanned_at = EXCLUDED.scanned_at, next_check = EXCLUDED.next_check,
            mode = EXCLUDED.mode"""
        params = [now, paths, sizes, mtimes, inodes, shas, _floats(dues), modes]
        async with self._write("recording posts") as conn:
            await conn.execute(sql, params)

    async def post_states_in(self, folder: str) -> dict[str, PostState]:
        """Return every recorded post under ``folder`` (subfolders included), by path."""
        low, high = folder + "/", folder + "0"  # "0" follows "/": the range is the prefix
        sql = f"SELECT {_POST_COLUMNS} FROM posts WHERE path > %s AND path < %s"
        async with self._read("reading posts") as conn:
            found = await self._all(conn, sql, (low, high))
        return {row[0]: PostState(*row) for row in found}

    async def post_state(self, path: str) -> PostState | None:
        """Return what ``path`` looked like when last recorded, or None."""
        sql = f"SELECT {_POST_COLUMNS} FROM posts WHERE path = %s"
        async with self._read("reading a post") as conn:
            found = await self._all(conn, sql, (path,))
        return PostState(*found[0]) if found else None

    async def record_spans(
        self,
        post: str,
        spans: Sequence[Span],
        sources: Sequence[str | None],
        *,
        before_sha256: str | None = None,
        after_sha256: str | None = None,
    ) -> int | None:
        """Record one rewrite of ``post``; return its generation, or None for no spans."""
        if len(spans) != len(sources):
            raise ValueError(f"{len(spans)} spans but {len(sources)} sources for {post}")
        if not spans:
            return None
        # One statement (mirror_record_spans), so one round trip and atomic on its own.
        async with self._statement("recording spans") as conn:
            found = await self._all(
                conn,
                "SELECT mirror_record_spans(%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    post,
                    before_sha256,
                    after_sha256,
                    self._clock(),
                    [span.offset for span in spans],
                    [span.old for span in spans],
                    [span.new for span in spans],
                    list(sources),
                ),
            )
        generation = int(found[0][0])
        return generation

    async def spans_for(self, post: str) -> list[Rewrite]:
        """Return the rewrites of ``post``, newest first: the order to undo them in."""
        async with self._read("reading spans", snapshot=True) as conn:
            heads = await self._all(
                conn,
                "SELECT generation, before_sha256, after_sha256, created FROM rewrites "
                "WHERE post = %s ORDER BY generation DESC",
                (post,),
            )
            found = await self._all(
                conn,
                """SELECT generation, "offset", old, new, source FROM spans WHERE post = %s
                ORDER BY generation, seq""",
                (post,),
            )
        spans: dict[int, list[RecordedSpan]] = {int(head[0]): [] for head in heads}
        for generation, *rest in found:
            spans[int(generation)].append(RecordedSpan(*rest))
        return [
            Rewrite(post, int(g), before, after, created, tuple(spans[int(g)]))
            for g, before, after, created in heads
        ]

    async def rewritten_posts(self) -> list[str]:
        """Return the key of every post with a recorded rewrite, sorted by code point."""
        async with self._read("reading spans") as conn:
            rows = await self._all(conn, "SELECT DISTINCT post FROM rewrites", ())
        # Sorted here: the database's collation need not be by code point.
        return sorted(str(key) for (key,) in rows)

    async def forget_rewrite(self, post: str, generation: int) -> None:
        """Drop one generation of ``post``'s rewrites, once it is undone or never landed."""
        async with self._write("forgetting a rewrite") as conn:
            await conn.execute(
                "DELETE FROM rewrites WHERE post = %s AND generation = %s", (post, generation)
            )
