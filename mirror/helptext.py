"""
The words of ``mirror --help`` and of each command's ``--help``: a paragraph, what PATH means,
examples, and the exit statuses. Kept apart from the parser so cli.py stays about behaviour.
"""

from __future__ import annotations

import textwrap

from mirror.errors import EXIT_STATUSES

WIDTH = 78

PATH = (
    "PATH is a post file (whatever its name) or a folder of posts, walked recursively for the "
    "scan.include globs (*.md, *.markdown, *.html, *.htm; hidden folders skipped). A PATH that "
    "does not exist is an error (exit 2); a folder with no posts only a warning."
)


def exit_statuses() -> str:
    """The exit statuses, one a line, for an epilog and the README."""
    lines = ["exit status:"]
    for status, meaning in EXIT_STATUSES:
        lines += textwrap.wrap(
            meaning, WIDTH, initial_indent=f"  {int(status):<4} ", subsequent_indent=" " * 7
        )
    return "\n".join(lines)


def paragraph(text: str) -> str:
    """Wrap a paragraph to the help's width."""
    return textwrap.fill(text, WIDTH)


MAIN = (
    "Rescue the images of Hexo posts that point through a dying CORS proxy: find them "
    "(scan), download and verify them into a content-addressed store (fetch), rewrite the "
    "posts byte-exactly to the copies (run does all three), and answer as the proxy did (serve). "
    "`mirror demo` runs the whole job on a bundled example, offline."
)

MAIN_EXAMPLES = """\
examples:
  mirror demo                              the whole job on the bundled example, no network
  mirror scan source/_posts                every image reference, counted
  mirror run source/_posts                 fetch into ./cache and rewrite the posts
  mirror serve --store cache               the proxy's drop-in replacement on 127.0.0.1:8080
  mirror COMMAND --help                    what a command does, its PATHs and examples"""

# The commands that take no PATH.
NO_PATH = ("serve", "demo", "verify", "sync", "worker", "status")

# command -> (one-line help, description paragraph, examples)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "scan": (
        "list every image reference",
        "List every image reference in the posts: where it stands (post, line, attribute), "
        "whether it is wrapped by a proxy, its declared size and its source URL, then the "
        "counts by where and by origin host. Nothing is fetched or written. --json prints one "
        "JSON object per reference on stdout instead.",
        """\
  mirror scan source/_posts
  mirror scan --json source/_posts > refs.jsonl
  mirror scan source/_posts/2022/some-post.md""",
    ),
    "rewrite": (
        "point references at new URLs",
        "Rewrite the posts' references byte-exactly: to the store's local copies (the "
        "manifest's mapping, default), to the URLs of a --map file, or to your own `mirror "
        "serve` (--rewrap). In place by default (atomic; recorded in the store so --revert can "
        "undo it), or as copies under --out, or as a diff (--dry-run). With --map or --rewrap no "
        "store is needed, and none is created unless --create is given.",
        """\
  mirror rewrite --dry-run source/_posts
  mirror rewrite --map map.json -o public_posts source/_posts
  mirror rewrite --rewrap https://img.example.com/ source/_posts
  mirror rewrite --revert source/_posts""",
    ),
    "fetch": (
        "download and verify",
        "Download every wrapped reference (origin first, then the proxy and the other "
        "fetch.sources), verify the bytes against the size the post declares, and keep them in "
        "the store with their manifest rows. Posts are left untouched; `mirror rewrite` points "
        "them at the copies later. The store is created when missing.",
        """\
  mirror fetch source/_posts
  mirror fetch -j 8 --timeout 30 --retries 5 source/_posts
  mirror fetch --refresh-after 30d --store /srv/mirror/cache source/_posts""",
    ),
    "run": (
        "scan + fetch + rewrite",
        "The whole job: scan the posts, fetch and verify their images into the store (created "
        "when missing), then rewrite each post to the verified copies, in place or as copies "
        "under --out. A second run fetches nothing already mirrored and skips unchanged posts "
        "unread. --dry-run uses no network and writes nothing: it prints what a run would "
        "fetch and the diff it would make.",
        """\
  mirror run source/_posts
  mirror run --dry-run source/_posts
  mirror run -o public_posts --report report.jsonl source/_posts
  mirror run --every 1h --sources origin,proxy,wayback source/_posts""",
    ),
    "serve": (
        "answer as the CORS proxy, from the store",
        "Serve GET /?<url> exactly as the CORS proxy did, from the verified copies in the store, "
        "and the stored objects under rewrite.base_url's path; a miss is fetched (closed world: "
        "only URLs the manifest knows; --open: any image URL). The --store must be a store "
        "or an empty folder (a missing one only with --open or --create). Stops on SIGTERM or "
        "Ctrl-C.",
        """\
  mirror serve --store cache
  mirror serve --store cache --port 8081 --workers 2
  mirror serve --store /data/cache --create --open""",
    ),
    "demo": (
        "the whole job on the bundled example",
        "Run the whole job on the bundled example posts against a bundled local origin (and a "
        "fake proxy over TLS), with a few images faulty on purpose; no network is used. The "
        "work folder (--dir, default ./mirror-demo) is created, or emptied of what an earlier "
        "demo made; a non-empty folder that is not an earlier demo's is refused.",
        """\
  mirror demo
  mirror demo --dir /tmp/try-mirror""",
    ),
    "verify": (
        "re-hash and check the store",
        "Re-hash every object (streamed, from a folder or a bucket) and compare them with the "
        "manifest: missing, corrupt and stray objects, one line each on stdout. --repair "
        "deletes corrupt objects the manifest names and fetches them (and the missing ones) "
        "again at once from their sources; what cannot be restored is listed.",
        """\
  mirror verify
  mirror verify --repair --store /srv/mirror/cache""",
    ),
    "gc": (
        "remove objects no post needs",
        "List the objects no post under the PATHs needs (by source and by local URL), with the "
        "bytes they take; --apply deletes them, rows first. Give every folder of posts that "
        "uses the store.",
        """\
  mirror gc source/_posts
  mirror gc --apply source/_posts other-blog/source/_posts""",
    ),
    "export": (
        "copy objects to publish with the site",
        "Copy (--link: hard-link, from a local store) into DIR/<ab>/<sha256>.<ext> the objects "
        "the posts under the PATHs need, or every object a source names when no PATH is given: "
        "DIR is the folder served at rewrite.base_url's path (/mirror/: a Hexo site's "
        "source/mirror). Any store, folder or bucket. A file already there is kept when its "
        "bytes are the object's; one that is not is left alone and reported. PATH is optional "
        "here.",
        """\
  mirror export source/mirror source/_posts
  mirror export --link /srv/www/mirror""",
    ),
    "sync": (
        "copy objects between two stores",
        "Copy into the store DST every object of the store SRC that DST lacks (folders, "
        "file:/// or s3://bucket/prefix URLs; [store.s3] settings and credentials from the "
        "environment apply to an s3:// side), streaming each through DST's staging area and "
        "committing it only when its bytes hash to its name; one that does not is refused "
        "(exit 1). Objects only: the manifest stays where it is. --dry-run lists what would be "
        "copied.",
        """\
  mirror sync ./cache s3://my-bucket/mirror
  mirror sync --dry-run s3://my-bucket/mirror ./restored""",
    ),
    "enqueue": (
        "queue the posts' sources for the workers",
        "Scan the posts and queue, in the PostgreSQL database [manifest] url names, every "
        "source not yet mirrored or due again, in tasks of up to queue.batch sources of one "
        "origin host; a source already queued is not queued twice. Posts are left untouched: "
        "`mirror worker` fetches, `mirror rewrite` points the posts at the copies once the "
        "queue has drained (`mirror status` shows it). Needs a postgresql:// manifest (exit 2 "
        "otherwise).",
        """\
  mirror enqueue source/_posts
  mirror enqueue --json source/_posts other-blog/source/_posts""",
    ),
    "worker": (
        "fetch queued sources until SIGTERM",
        "Take queued tasks and fetch, verify and store their sources into the shared store and "
        "manifest, on any number of machines at once: at most fetch.per_host requests per "
        "origin host across all workers, one circuit breaker per host for all of them, each "
        "source fetched by one worker at a time. Runs until SIGTERM or Ctrl-C, then gives back "
        "the tasks it had not finished; a worker killed outright has its tasks queued again "
        "once its heartbeat is queue.stalled_after old.",
        """\
  mirror worker
  mirror worker --concurrency 16 --sources origin,proxy,wayback""",
    ),
    "status": (
        "the queue per host, the workers",
        "Print the queue by origin host (queued, running, done, failed sources) and the "
        "workers alive, how many tasks each is running and when it was last heard from. Reads the "
        "database only; --json prints the same as one JSON object.",
        """\
  mirror status
  mirror status --json""",
    ),
    "report": (
        "write a visual HTML report",
        "Write one self-contained HTML page about the store: totals, failures by origin host "
        "and reason, every failed source, a thumbnail gallery. With PATHs, failures and images "
        "link to the post lines that name them. PATH is optional here.",
        """\
  mirror report --html report.html
  mirror report --html public/report.html source/_posts""",
    ),
}


def epilog(command: str) -> str:
    """A command's epilog: what PATH means (when it takes one), examples, exit statuses."""
    _help, _description, examples = COMMANDS[command]
    parts = []
    if command not in NO_PATH:
        parts.append(paragraph(PATH))
    parts.append("examples:\n" + examples)
    parts.append(exit_statuses())
    return "\n\n".join(parts)
