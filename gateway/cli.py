"""`gateway serve | token | org | keys | spool`: parse arguments, load settings, run.

Exit codes: 0 success, 1 a command that could not do what was asked (unknown org, token id),
2 unusable settings or start-up (one line on stderr naming the key and the problem).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog
from aiohttp import web

from gateway import __version__
from gateway.app import SERVER_OPTIONS, create_app
from gateway.bootstrap import ADMIN_TOKEN_FILE, open_registry, remove_revoked_admin_token_file
from gateway.cluster import serving_members
from gateway.config import Settings, SettingsError, config_path, load_settings
from gateway.errors import OrgNotFound, StartupError
from gateway.front.site import FrontSite, bind_listener
from gateway.heap import settle_heap
from gateway.keys import LIFECYCLE, PIPELINE
from gateway.logging import configure_logging
from gateway.loop import event_loop_factory
from gateway.provisioning import check_folder
from gateway.proxy.front_carrier import front_router
from gateway.registry.audit import CLI, acting_as
from gateway.registry.interface import OrgNameTaken, Registry
from gateway.registry.models import DataSource, Role
from gateway.registry.rules import parse_int64
from gateway.registry.secrets import (
    KEY_FILE_NAME,
    SecretBox,
    generate_key_text,
    write_private_file,
)
from gateway.registry.validation import (
    Violation,
    org_name_violations,
    token_description_violations,
)
from gateway.rlimits import raise_open_files_limit
from gateway.security.auth import hash_token, new_token
from gateway.spool import SpoolStore, commands as spool_commands, spool_path
from gateway.supervisor import WORKER_INDEX_ENV, supervise

log = structlog.get_logger("gateway")
ORPHAN_CHECK_SECONDS = 1.0


class CommandError(Exception):
    """The command cannot do what was asked; printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file (default: config/gateway.toml)")
    common.add_argument("--data-dir", help="database and key files (default: ./data)")
    common.add_argument("--log-format", choices=("auto", "json", "console"))
    common.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    parser = argparse.ArgumentParser(prog="gateway", description="Datasource Gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="listen address (default: 127.0.0.1)")
    serve.add_argument("--port", help="listen port (default: 8480)")
    serve.add_argument(
        "--workers", help="processes sharing the port through SO_REUSEPORT (default: 1)"
    )

    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", parents=[common], help="create and print a token")
    create.add_argument("--org", required=True, help="org name")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--description", default="")
    token_commands.add_parser("list", parents=[common], help="list tokens (never their values)")
    revoke = token_commands.add_parser("revoke", parents=[common], help="revoke a token by id")
    revoke.add_argument("id", type=positive_id)

    org = commands.add_parser("org", help="manage orgs")
    org_commands = org.add_subparsers(dest="action", required=True, metavar="ACTION")
    org_create = org_commands.add_parser("create", parents=[common], help="add an org")
    org_create.add_argument("name")
    org_commands.add_parser("list", parents=[common], help="list orgs")

    provision = commands.add_parser(
        "provision", parents=[common], help="data source provisioning files"
    )
    provision.add_argument(
        "--check",
        action="store_true",
        required=True,
        help="validate the files (provisioning.path) without touching the database",
    )

    keys = commands.add_parser("keys", help="manage the secureJsonData encryption key")
    keys_commands = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    keys_commands.add_parser(
        "rotate",
        parents=[common],
        help="re-encrypt every secret under a new key (GATEWAY_NEW_SECRET_KEY, or generated)",
    )
    spool = commands.add_parser("spool", help="the write spool (works while the gateway runs)")
    spool_commands = spool.add_subparsers(dest="action", required=True, metavar="ACTION")
    spool_commands.add_parser(
        "status", parents=[common], help="queued writes, bytes, oldest, dead letters per target"
    )
    letters = spool_commands.add_parser(
        "dead-letters", parents=[common], help="writes the upstream rejected, or that expired"
    )
    letters.add_argument("--source", metavar="UID", help="only this source's")
    for name, text in (
        ("retry", "put dead letters back at the end of their queues"),
        ("drop", "delete dead letters for good"),
    ):
        command = spool_commands.add_parser(name, parents=[common], help=text)
        command.add_argument("ids", nargs="+", type=positive_id, metavar="ID")
    return parser


def positive_id(text: str) -> int:
    """An id as the databases store them (a positive 64-bit integer): a larger number would
    overflow SQLite's INTEGER, so argparse refuses it with its one-line usage error."""
    number = parse_int64(text.strip())
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive 64-bit integer, got {text!r}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    handler = _HANDLERS[(args.command, getattr(args, "action", None))]
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(handler(settings, args))
    except (StartupError, SettingsError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "workers": getattr(args, "workers", None),
        "data_dir": args.data_dir,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }
    return load_settings(config_path(os.environ, args.config), os.environ, overrides)


# --- serve ------------------------------------------------------------------------------------


async def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT, then drain: /ready turns 503, in-flight requests finish
    (up to drain_timeout), and the process exits 0. With several workers, supervise them."""
    limit = raise_open_files_limit()  # workers inherit it (and find nothing left to raise)
    if limit is not None and limit.after > limit.before:
        log.info("open_files_limit_raised", before=limit.before, after=limit.after)
    elif limit is not None:
        log.warning(
            "open_files_limit_not_raised",
            limit=limit.before,
            hint="each proxied request holds two sockets: raise LimitNOFILE / ulimit -n",
        )
    if settings.workers > 1:
        return await supervise(settings, _worker_args(args))
    worker = os.environ.get(WORKER_INDEX_ENV)
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=int(worker))
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.drain_timeout,
        **SERVER_OPTIONS,
    )
    # Bound before the application starts: a taken port fails the start before provisioning
    # runs or the gateway says it is ready. Workers of one supervisor share the port; the
    # kernel spreads connections among them.
    try:
        sock = bind_listener(settings.host, settings.port, reuse_port=worker is not None)
    except OSError as exc:
        raise StartupError(
            f"server.host/port: cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from exc
    try:
        await runner.setup()
        # Proxied requests are served by the front protocol; the API by aiohttp behind it.
        site = FrontSite(
            runner,
            front_router(app[PIPELINE]),
            host=settings.host,
            sock=sock,
            drain_timeout=settings.drain_timeout,
        )
        await site.start()
        port = site.port
        allocator_tuned = settle_heap()  # after start-up: what it made lives as long as we do
        log.info(
            "gateway_listening",
            host=settings.host,
            port=port,
            version=__version__,
            allocator_tuned=allocator_tuned,
        )

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        orphan_watch = (
            asyncio.create_task(_stop_when_orphaned(os.getppid(), stop))
            if worker is not None
            else None
        )
        await stop.wait()
        if orphan_watch is not None:
            orphan_watch.cancel()
        app[LIFECYCLE].draining = True
        log.info(
            "gateway_draining",
            drain_delay=settings.drain_delay,
            drain_timeout=settings.drain_timeout,
        )
        if settings.drain_delay:
            await asyncio.sleep(settings.drain_delay)
    finally:
        try:
            await runner.cleanup()
        finally:
            sock.close()  # the site's server closed it already, unless start-up failed first
    log.info("gateway_stopped")
    return 0


async def _stop_when_orphaned(supervisor: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (killed, out of memory) drains and exits rather than
    serving on unsupervised; the kernel then re-parents it, which is what this watches."""
    while True:  # nothing signals a change of parent: polling getppid is the portable way
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)
        if os.getppid() != supervisor:
            break
    log.warning("supervisor_gone", supervisor_pid=supervisor)
    stop.set()


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The flags this `serve` was given, for its workers (all but --workers)."""
    flags = {
        "--host": args.host,
        "--port": args.port,
        "--config": args.config,
        "--data-dir": args.data_dir,
        "--log-format": args.log_format,
        "--log-level": args.log_level,
    }
    return [part for flag, value in flags.items() if value is not None for part in (flag, value)]


# --- provisioning ----------------------------------------------------------------------------


async def provision_check(settings: Settings, _: argparse.Namespace) -> int:
    """Print every problem in the provisioning files as `file:line: message`; exit 1 if any."""
    problems = await check_folder(settings, os.environ)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {settings.provisioning_path}", file=sys.stderr)
        return 1
    print(f"{settings.provisioning_path}: ok", file=sys.stderr)
    return 0


# --- registry commands ------------------------------------------------------------------------


async def _with_store(
    settings: Settings,
    action: Callable[[Registry], Awaitable[int]],
    *,
    alone: bool = False,
) -> int:
    """Run `action` on the store; `alone` first makes sure no gateway is serving this data."""
    # What a command changes, the audit log says the CLI did (gateway.registry.audit).
    with acting_as(CLI):
        async with open_registry(settings, exclusive=alone) as store:
            return await action(store)


async def token_create(settings: Settings, args: argparse.Namespace) -> int:
    _check(token_description_violations(args.description))

    async def action(store: Registry) -> int:
        try:
            org = await store.find_org(name=args.org)
        except OrgNotFound:
            raise CommandError(f"no org named {args.org!r} (see `gateway org list`)") from None
        token = new_token()
        token_id = await store.create_token(
            org.id, Role(args.role), hash_token(token), args.description
        )
        print(token)
        print(
            f"token {token_id}: role {args.role} in org {org.name!r}. "
            "Store it now: it is not shown again.",
            file=sys.stderr,
        )
        return 0

    return await _with_store(settings, action)


def _check(violations: list[Violation]) -> None:
    """The registry's own rules (gateway/registry/validation.py), worded as the APIs word them:
    `name: must not contain control characters`."""
    if violations:
        raise CommandError("; ".join(violation.message() for violation in violations))


async def token_list(settings: Settings, _: argparse.Namespace) -> int:
    async def action(store: Registry) -> int:
        rows = [("ID", "ORG", "ROLE", "CREATED", "REVOKED", "DESCRIPTION")]
        for token in await store.list_tokens():
            revoked = token.revoked.isoformat() if token.revoked else "-"
            rows.append(
                (
                    str(token.id),
                    token.org_name,
                    token.role.value,
                    token.created.isoformat(),
                    revoked,
                    token.description,
                )
            )
        for line in _aligned(rows):
            print(line)
        return 0

    return await _with_store(settings, action)


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as columns as wide as their widest cell (the first right-aligned: it holds
    numbers), two spaces apart; the last column is not padded."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for first, *middle, last in rows:
        cells = [first.rjust(widths[0])]
        cells += [cell.ljust(width) for cell, width in zip(middle, widths[1:], strict=True)]
        lines.append("  ".join([*cells, last]).rstrip())
    return lines


async def token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async def action(store: Registry) -> int:
        if not await store.revoke_token(args.id):
            raise CommandError(f"no active token with id {args.id}")
        print(f"token {args.id} revoked", file=sys.stderr)
        if await remove_revoked_admin_token_file(store, settings.data_dir):
            removed = settings.data_dir / ADMIN_TOKEN_FILE
            print(f"removed {removed}: it held this token", file=sys.stderr)
        return 0

    return await _with_store(settings, action)


async def org_create(settings: Settings, args: argparse.Namespace) -> int:
    _check(org_name_violations(args.name))  # as given: "   " is blank, not missing
    name = args.name.strip()

    async def action(store: Registry) -> int:
        try:
            org = await store.create_org(name)
        except OrgNameTaken as exc:
            raise CommandError(str(exc)) from exc
        print(f"{org.id}\t{org.influx_id}\t{org.name}")
        return 0

    return await _with_store(settings, action)


async def org_list(settings: Settings, _: argparse.Namespace) -> int:
    async def action(store: Registry) -> int:
        for org in await store.list_orgs():
            print(f"{org.id}\t{org.influx_id}\t{org.name}")
        return 0

    return await _with_store(settings, action)


async def keys_rotate(settings: Settings, _: argparse.Namespace) -> int:
    """Re-encrypt every secret under a new key in one transaction.

    A key from GATEWAY_SECRET_KEY is replaced by GATEWAY_NEW_SECRET_KEY (then the operator
    updates the environment). A key from `<data>/secret.key` is replaced by a new generated key;
    the file is swapped only after the database committed, so the two never disagree for long.
    """
    new_text = os.environ.get("GATEWAY_NEW_SECRET_KEY", "").strip()
    if settings.secret_key and not new_text:
        raise CommandError(
            "the key comes from GATEWAY_SECRET_KEY: set GATEWAY_NEW_SECRET_KEY to the new key"
        )
    if not new_text:
        new_text = generate_key_text()
    key_file = settings.data_dir / KEY_FILE_NAME
    pending = key_file.with_name(KEY_FILE_NAME + ".new")

    async def action(store: Registry) -> int:
        # The data directory's lock covers one host; a cluster's gateways say they serve the
        # registry by their heartbeats. Any of them would go on with the old key in memory.
        members, window = await serving_members(settings)
        if members:  # refused as the data directory's lock refuses: exit 2
            raise StartupError(
                f"{len(members)} gateway(s) serve this registry ({', '.join(members)}): stop "
                "every gateway of the cluster first (one that stopped uncleanly counts as "
                f"serving until {window:g} s after its last heartbeat)"
            )
        if not settings.secret_key:
            pending.unlink(missing_ok=True)
            write_private_file(pending, new_text)
        try:
            count = await store.rotate_key(SecretBox(new_text))
        except BaseException:
            pending.unlink(missing_ok=True)
            raise
        if not settings.secret_key:
            os.replace(pending, key_file)
            where = f"the new key is in {key_file}"
        else:
            where = "now set GATEWAY_SECRET_KEY to the value of GATEWAY_NEW_SECRET_KEY"
        print(
            f"re-encrypted the secrets of {count} data sources; {where}",
            file=sys.stderr,
        )
        return 0

    return await _with_store(settings, action, alone=True)


# --- the write spool ----------------------------------------------------------------------------


async def _with_spool(
    settings: Settings, action: Callable[[SpoolStore, dict[int, DataSource]], Awaitable[int]]
) -> int:
    """Run `action` on the spool file with the registered sources by id (to name them)."""
    path = spool_path(settings.data_dir)
    if not path.exists():
        raise CommandError(f"no write spool at {path} (nothing was ever queued there)")
    async with open_registry(settings) as store:
        sources = {source.id: source for source in await store.list_sources()}
    async with SpoolStore.open(path) as spool:
        return await action(spool, sources)


async def spool_status(settings: Settings, _: argparse.Namespace) -> int:
    async def action(spool: SpoolStore, sources: dict[int, DataSource]) -> int:
        for line in spool_commands.status_lines(await spool.status(), sources):
            print(line)
        return 0

    return await _with_spool(settings, action)


async def spool_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    async def action(spool: SpoolStore, sources: dict[int, DataSource]) -> int:
        wanted = None
        if args.source:
            wanted = spool_commands.source_id(sources, args.source)
            if wanted is None:
                raise CommandError(f"no source with uid {args.source!r}")
        letters = await spool.dead_letters(wanted)
        for line in spool_commands.dead_letter_lines(letters, sources):
            print(line)
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
        return 0

    return await _with_spool(settings, action)


async def spool_retry(settings: Settings, args: argparse.Namespace) -> int:
    async def action(spool: SpoolStore, _: dict[int, DataSource]) -> int:
        new_ids, missing = await spool_commands.retry(spool, args.ids)
        print(f"{len(new_ids)} dead letter(s) queued again", file=sys.stderr)
        if missing:
            raise CommandError(f"no dead letter with id {', '.join(map(str, missing))}")
        return 0

    return await _with_spool(settings, action)


async def spool_drop(settings: Settings, args: argparse.Namespace) -> int:
    async def action(spool: SpoolStore, _: dict[int, DataSource]) -> int:
        dropped = await spool.drop(args.ids)
        print(f"{dropped} dead letter(s) dropped", file=sys.stderr)
        if dropped < len(set(args.ids)):
            raise CommandError("some ids were not dead letters (see `gateway spool dead-letters`)")
        return 0

    return await _with_spool(settings, action)


Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
_HANDLERS: dict[tuple[str, str | None], Command] = {
    ("serve", None): serve,
    ("token", "create"): token_create,
    ("token", "list"): token_list,
    ("token", "revoke"): token_revoke,
    ("org", "create"): org_create,
    ("org", "list"): org_list,
    ("keys", "rotate"): keys_rotate,
    ("provision", None): provision_check,
    ("spool", "status"): spool_status,
    ("spool", "dead-letters"): spool_dead_letters,
    ("spool", "retry"): spool_retry,
    ("spool", "drop"): spool_drop,
}


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
