"""`gateway token | org | keys` as a user runs them, against a real data directory."""

from __future__ import annotations

import resource
import shutil
import stat
from pathlib import Path

import pytest

from gateway.registry.secrets import KEY_FILE_NAME
from tests.process import GatewayProcess, run_cli


def test_token_create_prints_the_token_once_and_list_never_shows_it(data_dir: Path) -> None:
    created = run_cli(
        "token", "create", "--org", "Main Org.", "--role", "editor", "--description", "ci",
        data_dir=data_dir,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("dsg_")
    assert "not shown again" in created.stderr
    listed = run_cli("token", "list", data_dir=data_dir)
    assert listed.returncode == 0
    assert token not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.rstrip().endswith("ci"))
    assert "editor" in row
    assert "Main Org." in row


def test_token_create_for_an_unknown_org_fails_with_exit_1(data_dir: Path) -> None:
    result = run_cli("token", "create", "--org", "Nope", "--role", "viewer", data_dir=data_dir)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("gateway: no org named 'Nope' (see `gateway org list`)")


def test_token_create_refuses_an_unknown_role(data_dir: Path) -> None:
    result = run_cli("token", "create", "--org", "Main Org.", "--role", "root", data_dir=data_dir)
    assert result.returncode == 2
    assert "invalid choice: 'root'" in result.stderr


def test_revoke_marks_the_token_and_refuses_unknown_ids(data_dir: Path) -> None:
    run_cli("token", "create", "--org", "Main Org.", "--role", "viewer", data_dir=data_dir)
    assert run_cli("token", "revoke", "1", data_dir=data_dir).returncode == 0
    listed = run_cli("token", "list", data_dir=data_dir).stdout.splitlines()[1]
    assert listed.split()[0] == "1"
    assert listed.split()[4] != "-"  # the REVOKED column holds a time now
    again = run_cli("token", "revoke", "1", data_dir=data_dir)
    assert again.returncode == 1
    assert "no active token with id 1" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("token", "revoke", "99999999999999999999999"),
        ("token", "revoke", "0"),
        ("token", "revoke", "-3"),
        ("spool", "drop", "1", "99999999999999999999999"),
        ("spool", "retry", "9223372036854775808"),
    ],
)
def test_ids_beyond_what_the_databases_store_are_refused_without_a_traceback(
    data_dir: Path, args: tuple[str, ...]
) -> None:
    result = run_cli(*args, data_dir=data_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    *_, last = result.stderr.strip().splitlines()
    assert last.endswith(f"must be a positive 64-bit integer, got {args[-1]!r}")


def test_token_list_columns_line_up_whatever_the_widths(data_dir: Path) -> None:
    for description in ("first", "second"):
        run_cli(
            "token", "create", "--org", "Main Org.", "--role", "viewer",
            "--description", description, data_dir=data_dir,
        )  # fmt: skip
    assert run_cli("token", "revoke", "1", data_dir=data_dir).returncode == 0
    header, *rows = run_cli("token", "list", data_dir=data_dir).stdout.splitlines()
    assert len(rows) == 2
    # Each column starts where its heading does, the timestamps' full width included.
    for heading in ("ORG", "ROLE", "CREATED", "REVOKED", "DESCRIPTION"):
        start = header.index(heading)
        for row in rows:
            assert row[start - 2 : start] == "  ", (heading, row)
            assert row[start] != " ", (heading, row)
    assert rows[0].split()[-1] == "first"
    assert rows[1].split()[-2:] == ["-", "second"]


def test_org_create_gives_an_influx_id_and_refuses_duplicates(data_dir: Path) -> None:
    created = run_cli("org", "create", "Team B", data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    org_id, influx_id, name = created.stdout.strip().split("\t")
    assert (org_id, name) == ("2", "Team B")
    assert len(influx_id) == 16
    int(influx_id, 16)
    duplicate = run_cli("org", "create", "team b", data_dir=data_dir)
    assert duplicate.returncode == 1
    # Names compare case-insensitively: the message names the org that holds the name.
    assert duplicate.stderr.strip().endswith(
        'name: an organization named "Team B" already exists'
    ), duplicate.stderr
    blank = run_cli("org", "create", "   ", data_dir=data_dir)
    assert blank.returncode == 1
    assert blank.stderr.strip().endswith("name: must not be blank"), blank.stderr
    listed = run_cli("org", "list", data_dir=data_dir).stdout.splitlines()
    assert [line.split("\t")[2] for line in listed] == ["Main Org.", "Team B"]


def test_keys_rotate_with_a_key_file_replaces_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"GATEWAY_SECRET_KEY": None}  # no key in the environment: the generated file is used
    assert run_cli("org", "list", data_dir=data, env=env).returncode == 0
    old_key = (data / KEY_FILE_NAME).read_text()
    rotated = run_cli("keys", "rotate", data_dir=data, env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted the secrets of 0 data sources" in rotated.stderr
    assert (data / KEY_FILE_NAME).read_text() != old_key
    assert not (data / (KEY_FILE_NAME + ".new")).exists()
    assert run_cli("org", "list", data_dir=data, env=env).returncode == 0  # new key opens it


def test_keys_rotate_with_an_env_key_needs_the_new_key(data_dir: Path) -> None:
    result = run_cli("keys", "rotate", data_dir=data_dir)
    assert result.returncode == 1
    assert "set GATEWAY_NEW_SECRET_KEY" in result.stderr
    rotated = run_cli("keys", "rotate", data_dir=data_dir, env={"GATEWAY_NEW_SECRET_KEY": "next"})
    assert rotated.returncode == 0, rotated.stderr
    stale = run_cli("org", "list", data_dir=data_dir)
    assert stale.returncode == 2
    assert "cannot decrypt" in stale.stderr
    assert "Traceback" not in stale.stderr
    fresh = run_cli("org", "list", data_dir=data_dir, env={"GATEWAY_SECRET_KEY": "next"})
    assert fresh.returncode == 0


def test_keys_rotate_refuses_while_a_gateway_serves_the_data(tmp_path: Path) -> None:
    """A running gateway keeps the key in memory: rotating under it would strand its writes."""
    data = tmp_path / "data"
    env = {"GATEWAY_NEW_SECRET_KEY": "next-key"}
    gateway = GatewayProcess(data)
    try:
        refused = run_cli("keys", "rotate", data_dir=data, env=env)
        assert refused.returncode == 2
        assert "in use by a running gateway; stop it first" in refused.stderr
        assert run_cli("org", "list", data_dir=data).returncode == 0  # other commands still run
    finally:
        assert gateway.stop() == 0
    assert run_cli("keys", "rotate", data_dir=data, env=env).returncode == 0


def test_the_data_directory_and_database_are_private(data_dir: Path) -> None:
    assert run_cli("org", "list", data_dir=data_dir).returncode == 0
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in (
        ("gateway.db", "secret.key") if (data_dir / "secret.key").exists() else ("gateway.db",)
    ):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("org", "create", " "), "name: must not be blank"),  # as the API says of a source
        (("org", "create", ""), "name: required"),
        (("org", "create", "Team\tB"), "name: must not contain control characters"),
        (("org", "create", "n" * 191), "name: must be at most 190 characters, got 191"),
        (
            ("token", "create", "--org", "Main Org.", "--role", "viewer",
             "--description", "ci\x1b[31m"),
            "description: must not contain control characters",
        ),
    ],
)  # fmt: skip
def test_org_names_and_token_descriptions_follow_the_registry_rules(
    data_dir: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_cli(*args, data_dir=data_dir)
    # Refused before the registry is opened: nothing logged, nothing written.
    assert (result.returncode, result.stderr.strip()) == (1, f"gateway: {message}")
    listed = run_cli("org", "list", data_dir=data_dir).stdout.splitlines()
    assert [line.split("\t")[2] for line in listed] == ["Main Org."]
    tokens = run_cli("token", "list", data_dir=data_dir).stdout.splitlines()
    assert len(tokens) == 1  # the header: no token was made


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/<pid>/limits")


@pytest.mark.skipif(
    not Path("/proc/self/limits").exists() or shutil.which("prlimit") is None,
    reason="needs Linux's /proc/<pid>/limits and prlimit(1)",
)
def test_serve_raises_its_open_files_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Two sockets a proxied request: systemd's soft limit of 1024 would refuse connections at a
    few hundred in flight. Go programs raise it at start; so does `gateway serve`."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    limit = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    gateway = GatewayProcess(tmp_path / "data", prefix=["prlimit", f"--nofile=256:{limit}", "--"])
    try:
        soft_now, hard_now = _open_files_limits(gateway.proc.pid)
        assert soft_now == hard_now
        raised = gateway.wait_for("open_files_limit_raised")
        assert (raised["before"], raised["after"]) == (256, soft_now)
    finally:
        assert gateway.stop() == 0
