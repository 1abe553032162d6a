"""
The fetch work on a queue, so several processes and machines fetch for one store and manifest.

``mirror enqueue`` scans the posts and queues one task per source (:mod:`.enqueue`);
``mirror worker`` runs anywhere and does fetch → verify → store → manifest for them
(:mod:`.worker`), polite across all workers (:mod:`.hosts`); ``mirror rewrite`` then rewrites
from the shared manifest, and ``mirror run --workers N`` does all of it on one machine with N
local worker processes (:mod:`.commands`, which registers the commands too). ``mirror status``
shows the queue (:mod:`.status`).
The queue is procrastinate's, in the PostgreSQL database of the manifest (:mod:`.app`,
:mod:`.schema`); procrastinate and psycopg are imported only by these commands.
"""
