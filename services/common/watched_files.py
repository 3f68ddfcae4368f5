"""Noticing that files were replaced or rewritten, without reading them.

Mounted Kubernetes Secrets change by an atomic swap of a symbolic link (new
inode), editors and ``cp`` rewrite in place (new size or modification time):
comparing ``os.stat`` of each path, through its links, sees both. Cheap enough
to ask before every TLS handshake; a file that is missing counts as a state
of its own, so its coming back is a change too.
"""

from __future__ import annotations

import os
from pathlib import Path

Signature = tuple[int, int, int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


class WatchedFiles:
    """Tells whether any of ``paths`` changed since the last time it was asked (or since it was made)."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self._seen = self._now()

    def _now(self) -> tuple[Signature, ...]:
        return tuple(_signature(path) for path in self.paths)

    def changed(self) -> bool:
        """True once per change: the new state counts as seen from then on."""
        now = self._now()
        if now == self._seen:
            return False
        self._seen = now
        return True

    def forget(self) -> None:
        """Makes the next ``changed`` say True (after a read that caught the files half-replaced)."""
        self._seen = ()
