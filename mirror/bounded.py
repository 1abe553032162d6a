"""
Per-URL memory of ``serve``, bounded by entries and by bytes.

A proxy that anyone can send URLs to must not grow with the number of distinct URLs it has seen:
100,000 refused URLs of 8 KB each once cost 920 MB. Every per-URL map of ``serve`` is a
:class:`BoundedMap`, which forgets its least recently used entries beyond ``max_entries`` or
beyond ``max_bytes`` of estimated cost, and where the URL itself need not be kept, the key is
:func:`url_key`, a fixed-size digest of the (normalized) URL instead of the URL.

The cost of an entry is its key's and value's ``sys.getsizeof`` (the value's parts included, by
the caller's ``cost`` function) plus :data:`SLOT_BYTES`, the map's own per-entry bookkeeping,
measured with tracemalloc (tests/test_serve_bounds.py checks the estimate against it).
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# OrderedDict's slot, index and linked-list node per entry: tracemalloc measured 74-116 bytes
# after filling and up to 199 under steady eviction (freed slots linger until the table is
# rebuilt), from 1,000 to 200,000 entries.
SLOT_BYTES = 200
KEY_BYTES = 16
# Keyed per process, so nobody can precompute two URLs that share a key.
_KEYED = hashlib.blake2b(digest_size=KEY_BYTES, key=secrets.token_bytes(16))


def url_key(url: str) -> bytes:
    """
    Return a 16-byte digest standing for ``url`` in a per-URL map.

    128 bits make a collision among a map's entries far less likely than a memory error; the
    ``surrogatepass`` encoding takes any ``str`` the HTTP parser can produce.
    """
    digest = _KEYED.copy()
    digest.update(url.encode("utf-8", "surrogatepass"))
    return digest.digest()


def sizeof(key: object, value: object) -> int:
    """The default cost of an entry: ``sys.getsizeof`` of its key and of its value."""
    return sys.getsizeof(key) + sys.getsizeof(value)


class BoundedMap(Generic[K, V]):
    """
    A least-recently-used map of at most ``max_entries`` entries costing at most ``max_bytes``.

    ``cost(key, value)`` estimates what one entry holds beyond the map's slot; it is computed
    again when the entry goes, so values must not change while held (tuples, strings, numbers).
    An entry that alone costs more than ``max_bytes`` is not kept at all.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        cost: Callable[[K, V], int] = sizeof,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a BoundedMap needs room for at least one entry")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.held = 0  # the estimated bytes of all entries
        self._cost = cost
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """Return the value of ``key`` (now the most recently used), or None."""
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key``, forgetting the least recently used beyond the bounds."""
        self.pop(key)
        cost = self._cost(key, value) + SLOT_BYTES
        if cost > self.max_bytes:
            return
        self._items[key] = value
        self.held += cost
        # Bounded: every pass removes one entry, and the newest one always fits.
        while len(self._items) > self.max_entries or self.held > self.max_bytes:
            old_key, old = self._items.popitem(last=False)
            self.held -= self._cost(old_key, old) + SLOT_BYTES

    def pop(self, key: K) -> V | None:
        """Forget ``key``; return its value, or None."""
        if key not in self._items:
            return None
        old = self._items.pop(key)
        self.held -= self._cost(key, old) + SLOT_BYTES
        return old

    def drain(self) -> dict[K, V]:
        """Return every entry, oldest first, and leave the map empty."""
        items = dict(self._items)
        self._items.clear()
        self.held = 0
        return items
