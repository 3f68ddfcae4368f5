"""The one shape of every facegen gRPC service, and the one way each is run.

A service is four modules: ``settings.py`` (its ``ServerSettings`` class),
``service.py`` (the servicer only), ``app.py`` (a ``ServiceApp``: what the
servicer needs, built without I/O, and its life cycle) and ``__main__.py``,
one call to ``run_service``. The life cycle, the same for every service:

1. ``listen()`` binds the port; health answers NOT_SERVING.
2. ``prepare()`` does what must work before traffic comes (load a model,
   check storage, reach the job store); then health says SERVING. A
   ``prepare`` that fails leaves the process running and NOT_SERVING with a
   clear log line, so an orchestrator sees an unhealthy pod, not a crash loop.
3. On SIGTERM or SIGINT: NOT_SERVING, ``drain()`` (work in progress ends or
   is handed over), the server stops (in-flight calls get the grace period),
   then ``close()`` releases connections, threads and processes.

Tests and benchmarks use ``start()`` (listen, prepare, SERVING) and ``stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.common import logs, tracing
from services.common.config import ConfigError, ServerSettings
from services.common.server import ServiceServer

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServerSettings)
EXIT_CONFIG = 2


class ServiceApp(ABC):
    """One service's parts around its gRPC server; built from its settings without I/O."""

    server: ServiceServer

    def describe(self) -> Mapping[str, object]:
        """The configuration worth one log line at start (secrets masked)."""
        return {}

    async def listen(self) -> int:
        """Binds the port and answers calls (health NOT_SERVING); returns the port."""
        return await self.server.start()

    @abstractmethod
    async def prepare(self) -> None:
        """What must work before health reports SERVING."""

    async def drain(self) -> None:  # noqa: B027 (optional: most services have nothing to drain)
        """On SIGTERM, after NOT_SERVING and before the server stops: let work in progress end."""

    async def close(self) -> None:  # noqa: B027 (optional: not every service holds resources)
        """After the server stopped: releases what ``__init__`` and ``prepare`` acquired."""

    async def ready(self) -> None:
        """``prepare``, then SERVING."""
        await self.prepare()
        await self.server.set_serving(True)

    async def start(self) -> int:
        """``listen`` and ``ready``; returns the port."""
        port = await self.listen()
        await self.ready()
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Stops the server (in-flight calls get ``grace`` s, the setting by default), then ``close``."""
        await self.server.stop(grace)
        await self.close()


@dataclass(frozen=True)
class Command(Generic[S]):
    """Something besides serving that ``python -m services.<name> <command> [args]`` does with the settings."""

    run: Callable[[S, list[str]], Coroutine[Any, Any, int]]
    help: str
    # The log level while it runs (a command that prints a report wants the log quiet); None: the setting's.
    log_level: str | None = None


def run_service(app_class: Callable[[S], ServiceApp], settings_class: type[S], name: str,
                commands: Mapping[str, Command[S]] | None = None, argv: Sequence[str] | None = None) -> int:
    """``python -m services.<name>``: serves until SIGTERM/SIGINT (or runs a command); returns the exit code.

    A bad setting, or a part that refuses the configuration while the app
    is built (a catalog, a device), ends the process with one line on stderr
    and exit code 2.
    """
    commands = dict(commands or {})
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}", description=f"the facegen {name}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", *commands],
                        help="; ".join(["serve: serve gRPC until SIGTERM (the default)",
                                        *(f"{key}: {command.help}" for key, command in commands.items())]))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    command = commands.get(args.command)
    try:
        settings = settings_class.from_env()
        logs.configure(name, (command.log_level if command else None) or settings.log_level, settings.log_format)
        if command is not None:
            return asyncio.run(command.run(settings, args.args))
        if args.args:
            parser.error(f"serve takes no arguments: {' '.join(args.args)}")
        tracing.configure(name, settings.tracing)
        try:
            return asyncio.run(serve(lambda: app_class(settings), name))
        finally:
            tracing.shutdown()  # exports the spans still buffered
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG


async def serve(build: Callable[[], ServiceApp], name: str) -> int:
    """Builds the app (in the event loop, where its channels and tasks belong) and runs its life cycle."""
    app = build()
    settings = app.server.settings
    config: dict[str, Any] = {**app.describe(), "metrics": settings.metrics_listen or "off",
                              "tracing": settings.tracing.describe()}
    logs.event(log, f"{name}.config", logging.INFO, **config)
    port = await app.listen()
    health: dict[str, Any] = {"health_port": app.server.health_port} if app.server.health_server else {}
    logs.event(log, "server.listening", service=name, address=settings.listen, port=port,
               tls=settings.tls.server_mode, metrics_port=app.server.metrics_endpoint.port or "-", **health)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def get_ready() -> None:
        try:
            await app.ready()
        except Exception as exc:
            logs.event(log, "server.start_failed", logging.ERROR, service=name, error=exc,
                       exc_info=exc if not isinstance(exc, (OSError, ValueError)) else None)
            return
        logs.event(log, "server.serving", service=name, port=port)

    starter = asyncio.create_task(get_ready(), name=f"{name}-prepare")
    await stop.wait()
    logs.event(log, "server.stopping", service=name, grace_s=app.server.settings.grace_seconds)
    starter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starter
    await app.server.set_serving(False)
    await app.drain()
    await app.server.stop()
    await app.close()
    logs.event(log, "server.stopped", service=name)
    return 0
