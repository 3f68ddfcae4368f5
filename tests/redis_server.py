"""A real ``redis-server`` of the test's own: a free loopback port, its data in a temporary directory.

``make setup`` installs Debian's redis-server where it is missing. Tests use
it as a deployment would, and can stop, kill and restart it on the same port
(with its append-only file, a restart keeps what was acknowledged).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; ``url`` stays the same across restarts."""

    def __init__(self, directory: Path, appendonly: bool = True, fsync: str = "everysec") -> None:
        """``fsync``: the AOF's ``appendfsync`` ("always" loses nothing even to SIGKILL)."""
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed: run `make setup` (it installs Debian's redis-server)")
        self.directory = directory
        self.appendonly = appendonly
        self.fsync = fsync
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, within_s: float = 10.0) -> RedisServer:
        """Starts the server and waits until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [str(REDIS_SERVER), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.fsync,
                "--daemonize", "no", "--loglevel", "warning"]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + within_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1.0)
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stops the server (SIGTERM: clean; SIGKILL: as a crash) and waits for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def client(self) -> redis.Redis:
        """A plain synchronous client, for looking at what the store wrote."""
        return redis.Redis(port=self.port)
