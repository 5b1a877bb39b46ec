"""Settings: file < environment < flags, and every way a setting can be unusable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.config import FIELDS, Settings, SettingsError, config_path, load_settings
from tests.process import run_cli

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


class TestPrecedence:
    def test_the_shipped_file_states_exactly_the_defaults(self) -> None:
        assert load_settings(REPO / "config" / "gateway.toml", {}) == Settings()

    def test_the_shipped_file_documents_every_file_key(self) -> None:
        text = (REPO / "config" / "gateway.toml").read_text()
        for field in FIELDS:
            if field.toml:
                assert field.toml.split(".")[-1] in text, field.toml
            assert field.env in text or field.toml is None, field.env

    def test_the_readme_documents_every_setting(self) -> None:
        readme = (REPO / "README.md").read_text()
        for field in FIELDS:
            assert f"`{field.env}`" in readme, field.env
            if field.toml:
                assert f"`{field.toml}`" in readme, field.toml

    def test_missing_file_gives_defaults(self, tmp_path: Path) -> None:
        assert load_settings(tmp_path / "absent.toml", {}) == Settings()

    def test_environment_overrides_file_and_flags_override_both(self, tmp_path: Path) -> None:
        path = write(tmp_path, '[server]\nport = 9000\nhost = "10.0.0.1"\n[health]\ninterval = 7\n')
        env = {"GATEWAY_PORT": "9100", "GATEWAY_HEALTH_INTERVAL": "3.5"}
        settings = load_settings(path, env, {"port": "9200", "host": None})
        assert settings.port == 9200  # flag
        assert settings.host == "10.0.0.1"  # file (no env, flag not given)
        assert settings.health_interval == 3.5  # env over file

    def test_secrets_come_from_the_environment(self, tmp_path: Path) -> None:
        env = {
            "GATEWAY_ADMIN_TOKEN": "admin-t0ken",
            "GATEWAY_SECRET_KEY": "s3cret-key",
            "GATEWAY_METRICS_TOKEN": "metr1cs",
        }
        settings = load_settings(None, env)
        assert settings.admin_token == "admin-t0ken"
        assert settings.secret_key == "s3cret-key"
        assert settings.metrics_token == "metr1cs"
        for value in env.values():  # secrets stay out of repr, hence out of logs and tracebacks
            assert value not in repr(settings)

    def test_lists_come_from_toml_arrays_or_comma_separated_variables(self, tmp_path: Path) -> None:
        path = write(tmp_path, '[proxy]\nallowed_hosts = ["prom:9090", "10.0.0.0/8"]\n')
        assert load_settings(path, {}).proxy_allowed_hosts == ("prom:9090", "10.0.0.0/8")
        env = {"GATEWAY_PROXY_DENIED_NETWORKS": " 169.254.0.0/16 ,, fe80::/10"}
        assert load_settings(None, env).proxy_denied_networks == ("169.254.0.0/16", "fe80::/10")

    def test_config_path_flag_then_env_then_default(self, tmp_path: Path) -> None:
        env_file, flag_file = write(tmp_path, ""), tmp_path / "flag.toml"
        flag_file.write_text("")
        assert config_path({}, None) == Path("config/gateway.toml")
        assert config_path({"GATEWAY_CONFIG": str(env_file)}, None) == env_file
        assert config_path({"GATEWAY_CONFIG": str(env_file)}, str(flag_file)) == flag_file

    def test_a_named_config_file_must_exist(self, tmp_path: Path) -> None:
        with pytest.raises(SettingsError, match=r"--config: .*typo\.toml: no such file"):
            config_path({}, str(tmp_path / "typo.toml"))
        with pytest.raises(SettingsError, match=r"GATEWAY_CONFIG: .*gone\.toml: no such file"):
            config_path({"GATEWAY_CONFIG": str(tmp_path / "gone.toml")}, None)

    def test_kubernetes_service_link_variables_are_not_settings(self) -> None:
        env = {
            "GATEWAY_PORT": "tcp://10.0.0.7:8480",
            "GATEWAY_SERVICE_HOST": "10.0.0.7",
            "GATEWAY_SERVICE_PORT": "8480",
            "GATEWAY_PORT_8480_TCP_ADDR": "10.0.0.7",
        }
        assert load_settings(None, env) == Settings()


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("[server]\nprot = 1\n", "gateway.toml: server.prot: unknown key"),
            ("[sever]\nport = 1\n", "gateway.toml: sever.port: unknown key"),
            ('[server]\nport = "eighty"\n', "server.port: expected an integer, got 'eighty'"),
            ("[server]\nport = 70000\n", "server.port: must be between 0 and 65535, got 70000"),
            ("[server]\nport = true\n", "server.port: expected an integer, got a boolean"),
            ("[server]\nhost = 5\n", "server.host: expected a string, got an integer"),
            ("[health]\ninterval = -1\n", "health.interval: must be at least 0.1 seconds"),
            ('[log]\nformat = "xml"\n', "log.format: must be one of auto, json, console"),
            ("[server\nport = 1\n", "not valid TOML"),
            ('[security]\nsecret_key = "x"\n', "secrets are read only from environment variables"),
            ('[proxy]\nallowed_hosts = "prom"\n', "'prom' is neither host:port nor a CIDR network"),
            ("[proxy]\ndenied_networks = [1]\n", "expected strings, got an integer"),
            ('[proxy]\ndenied_networks = ["10.0.0.0/40"]\n', "is not a CIDR network"),
        ],
    )
    def test_file_errors_name_the_key(self, tmp_path: Path, text: str, message: str) -> None:
        with pytest.raises(SettingsError) as caught:
            load_settings(write(tmp_path, text), {})
        assert message in str(caught.value)

    @pytest.mark.parametrize(
        ("env", "message"),
        [
            ({"GATEWAY_PROT": "1"}, "GATEWAY_PROT: unknown setting"),
            ({"GATEWAY_PORT": "x"}, "GATEWAY_PORT: expected an integer, got 'x'"),
            ({"GATEWAY_HEALTH_TIMEOUT": "nan"}, "GATEWAY_HEALTH_TIMEOUT: must be a finite number"),
            ({"GATEWAY_LOG_LEVEL": "loud"}, "GATEWAY_LOG_LEVEL: must be one of"),
            ({"GATEWAY_DATA_DIR": "  "}, "GATEWAY_DATA_DIR: must not be empty"),
        ],
    )
    def test_environment_errors_name_the_variable(self, env: dict[str, str], message: str) -> None:
        with pytest.raises(SettingsError) as caught:
            load_settings(None, env)
        assert message in str(caught.value)

    def test_flag_errors_name_the_flag(self) -> None:
        with pytest.raises(SettingsError, match="--port: expected an integer"):
            load_settings(None, {}, {"port": "abc"})


class TestStartupExitCodes:
    """The real command: exit code 2 and one line naming the problem, never a traceback."""

    def test_bad_setting_exits_2_with_one_line(self, tmp_path: Path) -> None:
        result = run_cli("serve", data_dir=tmp_path / "data", env={"GATEWAY_PORT": "http"})
        assert result.returncode == 2
        assert result.stderr.strip() == "gateway: GATEWAY_PORT: expected an integer, got 'http'"
        assert "Traceback" not in result.stdout + result.stderr

    def test_unknown_key_in_the_file_exits_2(self, tmp_path: Path) -> None:
        config = write(tmp_path, "[server]\nhots = 1\n")
        result = run_cli("serve", "--config", str(config), data_dir=tmp_path / "data")
        assert result.returncode == 2
        assert result.stderr.strip() == f"gateway: {config}: server.hots: unknown key"

    def test_unusable_data_dir_exits_2(self, tmp_path: Path) -> None:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        result = run_cli("serve", data_dir=blocker)
        assert result.returncode == 2
        assert f"data.dir ({blocker}): exists and is not a directory" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    def test_a_wrong_secret_key_exits_2_and_changes_nothing(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        assert run_cli("org", "create", "Team", data_dir=data).returncode == 0
        before = (data / "gateway.db").read_bytes()
        result = run_cli("serve", data_dir=data, env={"GATEWAY_SECRET_KEY": "another-key"})
        assert result.returncode == 2
        assert "GATEWAY_SECRET_KEY cannot decrypt" in result.stderr
        assert "nothing was changed" in result.stderr
        assert "Traceback" not in result.stderr
        assert (data / "gateway.db").read_bytes() == before

    def test_port_in_use_exits_2(self, tmp_path: Path) -> None:
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            result = run_cli(
                "serve", "--port", str(port), data_dir=tmp_path / "data", env={}, timeout=30
            )
        assert result.returncode == 2
        assert "cannot listen on 127.0.0.1" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr


class TestUnusableDataFiles:
    """Broken files in the data directory: one line and exit 2, never a traceback."""

    def test_an_empty_key_file(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        (data / "secret.key").write_text("\n")
        result = run_cli("org", "list", data_dir=data, env={"GATEWAY_SECRET_KEY": None})
        assert result.returncode == 2
        assert result.stderr.strip().endswith("secret.key: the secret key is empty")
        assert "Traceback" not in result.stderr

    def test_a_database_file_that_is_not_sqlite(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        data.mkdir()
        (data / "gateway.db").write_bytes(b"this is not a database" * 100)
        result = run_cli("serve", data_dir=data)
        assert result.returncode == 2
        assert "is not a usable SQLite database" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_schema_newer_than_the_gateway(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        assert run_cli("org", "list", data_dir=data).returncode == 0
        with sqlite3.connect(data / "gateway.db") as raw:
            raw.execute("PRAGMA user_version = 999")
        result = run_cli("serve", data_dir=data)
        assert result.returncode == 2
        assert "newer than this gateway knows" in result.stderr
        assert "Traceback" not in result.stderr
