"""Provisioning in the running gateway: apply at start-up, re-apply on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

import structlog
from aiohttp import web

from gateway.config import Settings
from gateway.errors import StartupError
from gateway.keys import SETTINGS, SSRF, STORE
from gateway.provisioning.apply import Counts, apply_files
from gateway.provisioning.files import read_folder, read_folder_to_check
from gateway.provisioning.model import ProvisioningFailed, in_order
from gateway.provisioning.targets import refused_targets
from gateway.proxy.ssrf import SsrfPolicy
from gateway.registry.interface import Registry

log = structlog.get_logger(__name__)


async def provisioning_ctx(app: web.Application) -> AsyncIterator[None]:
    """Apply the files before the gateway is ready (a problem stops start-up), then re-apply
    them on every SIGHUP until shutdown."""
    provisioner = Provisioner(
        app[STORE], app[SETTINGS].provisioning_path, os.environ, policy=app[SSRF]
    )
    try:
        await provisioner.apply("startup")
    except ProvisioningFailed as exc:
        raise StartupError(startup_message(provisioner.folder, exc)) from None
    reloader = Reloader(provisioner)
    reloader.start()
    try:
        yield
    finally:
        await reloader.stop()


def startup_message(folder: Path, failure: ProvisioningFailed) -> str:
    lines = "\n".join(f"  {line}" for line in failure.lines())
    count = len(failure.problems)
    return f"provisioning ({folder}): {count} problem(s), nothing was applied:\n{lines}"


async def check_folder(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """What `gateway provision --check` prints: every problem in the files, the SSRF policy's
    refusals included, as `file:line: message`; touches no database."""
    files, problems = await asyncio.to_thread(
        read_folder_to_check, settings.provisioning_path, dict(environ)
    )
    problems += await refused_targets(files, ssrf_policy(settings))
    return [str(problem) for problem in in_order(problems)]


def ssrf_policy(settings: Settings) -> SsrfPolicy:
    return SsrfPolicy.from_rules(settings.proxy_allowed_hosts, settings.proxy_denied_networks)


class Provisioner:
    def __init__(
        self,
        store: Registry,
        folder: Path,
        environ: Mapping[str, str],
        *,
        policy: SsrfPolicy | None = None,
    ) -> None:
        """`policy`: the SSRF policy the APIs apply at save (None: every target allowed)."""
        self.folder = folder
        self._store = store
        self._environ = environ
        self._policy = policy

    async def apply(self, trigger: str) -> Counts:
        """Read and apply every file; ProvisioningFailed leaves the registry as it was."""
        # A copy: the thread must not read the environment while something else may change it.
        environ = dict(self._environ)
        files, problems = await asyncio.to_thread(read_folder, self.folder, environ)
        if self._policy is not None and not problems:
            problems = await refused_targets(files, self._policy)
        if problems:
            raise ProvisioningFailed(problems)
        counts = Counts()
        if files:
            # One gateway at a time on a shared database: the next finds nothing left to do.
            async with self._store.provisioning_lock():
                counts = await apply_files(self._store, files)
        log.info(
            "provisioning_applied",
            trigger=trigger,
            path=str(self.folder),
            files=len(files),
            **dataclasses.asdict(counts),
        )
        return counts


class Applier(Protocol):
    folder: Path

    async def apply(self, trigger: str) -> Counts: ...


class Reloader:
    """Re-applies on request (SIGHUP), one apply at a time: requests that arrive during an
    apply are folded into one more apply after it."""

    def __init__(self, provisioner: Applier) -> None:
        self._provisioner = provisioner
        self._requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handles_signal = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="provisioning-reloader")
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            # No SIGHUP here (another platform, or a loop outside the main thread).
            log.warning("provisioning_reload_signal_unavailable", error=str(exc))
        else:
            self._handles_signal = True

    def request(self) -> None:
        self._requested.set()

    async def stop(self) -> None:
        if self._handles_signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._handles_signal = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._requested.wait()
            self._requested.clear()
            await self._reload()

    async def _reload(self) -> None:
        try:
            await self._provisioner.apply("sighup")
        except ProvisioningFailed as exc:
            for line in exc.lines():
                log.error("provisioning_problem", problem=line)
            log.error(
                "provisioning_failed",
                trigger="sighup",
                path=str(self._provisioner.folder),
                problems=len(exc.problems),
                registry="unchanged",
            )
        except Exception:
            # The reloader must outlive any one failed apply (a locked database, say).
            log.exception("provisioning_reload_crashed", registry="unchanged")
