"""`database.url` / `GATEWAY_DATABASE_URL`: which backend it selects, and the start-up error a
URL that cannot be used gives (one line naming the setting, never the password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Settings, SettingsError, load_settings
from gateway.errors import StartupError
from gateway.registry.backends import backend_for
from gateway.registry.postgres import PostgresBackend
from gateway.registry.sqlite import SqliteBackend

DATA = Path("/srv/gateway-data")


def backend_of(url: str | None) -> object:
    return backend_for(Settings(data_dir=DATA, database_url=url))


class TestSelection:
    def test_unset_keeps_the_sqlite_file_in_the_data_dir(self) -> None:
        assert backend_of(None) == SqliteBackend(DATA / "gateway.db")
        assert backend_for(load_settings(None, {})) == SqliteBackend(Path("data/gateway.db"))

    @pytest.mark.parametrize(
        ("url", "path"),
        [
            ("sqlite:///var/lib/gw/registry.db", Path("/var/lib/gw/registry.db")),
            ("sqlite:relative/registry.db", Path("relative/registry.db")),
            ("sqlite://", DATA / "gateway.db"),
            ("SQLITE:///with%20space.db", Path("/with space.db")),
        ],
    )
    def test_a_sqlite_url_names_the_file(self, url: str, path: Path) -> None:
        assert backend_of(url) == SqliteBackend(path)

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://gw@db.example:5432/registry",
            "postgres://gw:pw@db.example/registry?sslmode=require",
            "postgresql:///registry?host=/run/postgresql",
        ],
    )
    def test_a_postgresql_url_selects_postgresql(self, url: str) -> None:
        assert backend_of(url) == PostgresBackend(url)

    def test_the_location_never_shows_the_password(self) -> None:
        backend = PostgresBackend("postgresql://gw:s3cr3t@db.example:5433/registry?password=x")
        assert backend.location == "postgresql://gw@db.example:5433/registry"
        assert PostgresBackend("postgresql://[::1]/r").location == "postgresql://[::1]/r"

    def test_a_url_of_another_scheme_built_in_code_is_a_start_up_error(self) -> None:
        with pytest.raises(StartupError, match=r"database\.url: expected sqlite"):
            backend_of("mysql://gw@db/registry")


class TestLoading:
    def test_the_environment_and_the_file_both_set_it(self, tmp_path: Path) -> None:
        url = "postgresql://gw@db.example:5432/registry"
        assert load_settings(None, {"GATEWAY_DATABASE_URL": url}).database_url == url
        path = tmp_path / "gateway.toml"
        path.write_text(f'[database]\nurl = "{url}"\n')
        assert load_settings(path, {}).database_url == url

    def test_the_password_stays_out_of_repr(self) -> None:
        settings = Settings(database_url="postgresql://gw:s3cr3t@db/registry")
        assert "s3cr3t" not in repr(settings)

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("mysql://gw:s3cr3t@db/registry", "expected sqlite:///path/to/gateway.db or post"),
            ("db.example:5432", "got a URL of scheme 'db.example'"),
            ("postgresql://gw:s3cr3t@db.example:port/registry", "port of the PostgreSQL URL"),
            ("postgresql://gw:s3cr3t@db.example:5432", "names no database"),
            ("postgresql://gw:s3cr3t@/registry", "names no host"),
            ("sqlite://host/file.db", "a sqlite URL names a file only"),
            ("  ", "must not be empty"),
        ],
    )
    def test_an_unusable_url_stops_start_up_naming_the_setting(
        self, url: str, problem: str
    ) -> None:
        with pytest.raises(SettingsError) as refused:
            load_settings(None, {"GATEWAY_DATABASE_URL": url})
        message = str(refused.value)
        assert message.startswith("GATEWAY_DATABASE_URL: ")
        assert problem in message
        assert "s3cr3t" not in message
