"""Reading and checking provisioning files: Grafana's format, variables, every problem with its
line, and nothing from the environment in any message. No database here (`check_files` needs
none)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import ClassVar

import pytest

from gateway.provisioning import check_files
from gateway.provisioning.expand import Expansion, expand
from gateway.provisioning.files import read_folder
from gateway.provisioning.model import ProvisioningFile
from gateway.registry.models import DataSourceSpec

SECRET = "s3cret-7f0c2a-never-printed"
REPO_EXAMPLE = Path(__file__).resolve().parent.parent / "config/provisioning/datasources"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def only_file(folder: Path, environ: dict[str, str] | None = None) -> ProvisioningFile:
    files, problems = read_folder(folder, environ or {})
    assert problems == []
    [file] = files
    return file


def only_spec(folder: Path, environ: dict[str, str] | None = None) -> DataSourceSpec:
    [source] = only_file(folder, environ).sources
    return source.spec


def problems_in(folder: Path, environ: dict[str, str] | None = None) -> list[str]:
    """The problems, without the folder part of each path."""
    return [line.removeprefix(f"{folder}/") for line in check_files(folder, environ or {})]


class TestExpand:
    ENV: ClassVar[dict[str, str]] = {"HOST": "prom", "PORT": "9090", "EMPTY": ""}

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("http://$HOST:$PORT", "http://prom:9090"),
            ("http://${HOST}:${PORT}/x", "http://prom:9090/x"),
            ("${HOST}_suffix", "prom_suffix"),
            ("$$HOST", "$HOST"),  # $$ is a literal $
            ("pa$$word", "pa$word"),
            ("$$$HOST", "$prom"),
            ("a$EMPTY-b", "a-b"),  # set but empty is ""
            ("cost: 5$", "cost: 5$"),  # a $ before nothing, a digit or a space stays
            ("$1 and $ x", "$1 and $ x"),
            ("no variables", "no variables"),
        ],
    )
    def test_substitutions(self, text: str, expected: str) -> None:
        assert expand(text, self.ENV) == Expansion(expected)

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("$MISSING", "environment variable MISSING is not set (write $$ for a literal $)"),
            ("${MISSING}", "environment variable MISSING is not set (write $$ for a literal $)"),
            ("${HOST", "'${' has no closing '}'"),
            ("${}", "'${}' is not a variable reference (letters, digits and _ only)"),
            ("${HOST:-x}", "'${HOST:-x}' is not a variable reference (letters, digits and _ only)"),
            ("$__file{/x}", "Grafana's $__file{...} is not supported: use an environment variable"),
        ],
    )  # fmt: skip
    def test_problems_name_the_reference(self, text: str, problem: str) -> None:
        assert expand(text, self.ENV).problems == (problem,)

    def test_a_value_is_never_expanded_again(self) -> None:
        assert expand("$A", {"A": "$B", "B": "no"}).text == "$B"


class TestFormat:
    def test_every_supported_field(self, folder: Path) -> None:
        write(
            folder,
            "all.yaml",
            """
            apiVersion: 1
            datasources:
              - name: Influx
                type: influxdb
                uid: influx-1
                orgId: 1
                access: direct
                url: http://influx:8086
                user: reader
                database: telegraf
                basicAuth: true
                basicAuthUser: basic
                withCredentials: true
                isDefault: true
                editable: true
                version: 7
                jsonData: {version: InfluxQL, timeout: 30, ratio: 0.5, keep: [a, 1, null]}
                secureJsonData: {password: pw, basicAuthPassword: 123}
                description: ignored, as is correlations
                correlations: []
            """,
        )
        assert only_spec(folder) == DataSourceSpec(
            name="Influx",
            type="influxdb",
            access="direct",
            url="http://influx:8086",
            user="reader",
            database="telegraf",
            basic_auth=True,
            basic_auth_user="basic",
            with_credentials=True,
            is_default=True,
            json_data={"version": "InfluxQL", "timeout": 30, "ratio": 0.5, "keep": ["a", 1, None]},
            secure_json_data={"password": "pw", "basicAuthPassword": "123"},
            uid="influx-1",
            read_only=False,
        )

    def test_defaults_are_grafanas(self, folder: Path) -> None:
        write(folder, "min.yaml", "apiVersion: 1\ndatasources: [{name: P, type: testdata}]\n")
        [source] = only_file(folder).sources
        assert source.org_id == 1
        assert source.spec == DataSourceSpec(name="P", type="testdata", read_only=True)

    def test_org_id_0_is_the_default_org_as_in_grafana(self, folder: Path) -> None:
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: P, type: x, orgId: 0}]\n")
        assert only_file(folder).sources[0].org_id == 1

    def test_delete_and_prune(self, folder: Path) -> None:
        write(
            folder,
            "d.yaml",
            """
            apiVersion: 1
            prune: true
            deleteDatasources:
              - name: old
              - {name: older, orgId: 2}
            """,
        )
        file = only_file(folder)
        assert file.prune is True
        assert [(ref.name, ref.org_id, ref.place.line) for ref in file.deletes] == [
            ("old", 1, 4),
            ("older", 2, 5),
        ]

    def test_anchors_and_merge_keys(self, folder: Path) -> None:
        write(
            folder,
            "m.yaml",
            """
            apiVersion: 1
            datasources:
              - &base
                name: one
                type: prometheus
                url: http://prom:9090
                jsonData: &json {httpMethod: POST, timeInterval: 15s}
              - <<: *base
                name: two
                jsonData: {<<: *json, httpMethod: GET}
            """,
        )
        one, two = (source.spec for source in only_file(folder).sources)
        assert (two.name, two.type) == ("two", "prometheus")
        assert two.json_data == {"httpMethod": "GET", "timeInterval": "15s"}
        assert one.json_data == {"httpMethod": "POST", "timeInterval": "15s"}

    def test_only_yaml_files_directly_in_the_folder_in_name_order(self, folder: Path) -> None:
        write(folder, "b.yml", "apiVersion: 1\n")
        write(folder, "a.yaml", "apiVersion: 1\n")
        write(folder, "c.json", "not yaml at all: [")
        write(folder, "d.yaml.bak", "not yaml at all: [")
        (folder / "sub.yaml").mkdir()
        (folder / "sub.yaml" / "e.yaml").write_text("not yaml at all: [")
        files, problems = read_folder(folder, {})
        assert problems == []
        assert [file.name for file in files] == ["a.yaml", "b.yml"]

    def test_a_missing_folder_has_nothing_to_provision(self, tmp_path: Path) -> None:
        assert read_folder(tmp_path / "absent", {}) == ([], [])

    def test_a_file_of_comments_provisions_nothing(self, folder: Path) -> None:
        write(folder, "empty.yaml", "# apiVersion: 1\n# datasources: []\n")
        write(folder, "blank.yml", "")
        files, problems = read_folder(folder, {})
        assert problems == []
        assert [file.sources + file.deletes for file in files] == [(), ()]


class TestEnvironment:
    def test_variables_expand_in_every_value(self, folder: Path) -> None:
        write(
            folder,
            "env.yaml",
            """
            apiVersion: 1
            datasources:
              - name: ${NAME}
                type: prometheus
                url: http://$HOST:${PORT}
                orgId: $ORG
                isDefault: ${DEFAULT}
                basicAuthUser: user$$1
                jsonData: {timeout: $PORT, literal: "$$PORT", number: 5}
                secureJsonData: {basicAuthPassword: $PASSWORD, token: "${EMPTY}"}
            """,
        )
        environ = {
            "NAME": "Prom",
            "HOST": "prom",
            "PORT": "9090",
            "ORG": "1",
            "DEFAULT": "true",
            "PASSWORD": SECRET,
            "EMPTY": "",
        }
        spec = only_spec(folder, environ)
        assert (spec.name, spec.url, spec.is_default) == ("Prom", "http://prom:9090", True)
        assert spec.basic_auth_user == "user$1"
        # As in Grafana, an expanded value in jsonData stays a string.
        assert spec.json_data == {"timeout": "9090", "literal": "$PORT", "number": 5}
        # An empty secret is no secret: nothing to store.
        assert spec.secure_json_data == {"basicAuthPassword": SECRET}

    def test_a_value_cannot_add_structure(self, folder: Path) -> None:
        write(folder, "e.yaml", "apiVersion: 1\ndatasources: [{name: $NAME, type: x}]\n")
        # The one problem is the name's own (a newline has no place in it): no uid, no entry.
        assert problems_in(folder, {"NAME": "a\nuid: injected\n- name: b"}) == [
            "e.yaml:2: name: must not contain control characters"
        ]
        spec = only_spec(folder, {"NAME": "a uid: injected - name: b"})
        assert spec.name == "a uid: injected - name: b"
        assert spec.uid == ""

    def test_unset_variables_are_problems_with_file_and_line(self, folder: Path) -> None:
        write(
            folder,
            "e.yaml",
            """
            apiVersion: 1
            datasources:
              - name: P
                type: testdata
                secureJsonData:
                  password: $PROM_PASSWORD
            """,
        )
        assert problems_in(folder) == [
            "e.yaml:6: secureJsonData.password: environment variable PROM_PASSWORD is not set "
            "(write $$ for a literal $)"
        ]

    def test_a_value_that_cannot_be_stored_is_a_problem(self, folder: Path) -> None:
        # os.environ turns a byte that is not UTF-8 into a lone surrogate.
        write(folder, "e.yaml", "apiVersion: 1\ndatasources: [{name: $NAME, type: x}]\n")
        assert problems_in(folder, {"NAME": "caf\udce9"}) == [
            "e.yaml:2: name: must not contain NUL characters or lone surrogates"
        ]

    def test_no_message_shows_a_value_from_the_environment(self, folder: Path) -> None:
        write(
            folder,
            "leak.yaml",
            """
            apiVersion: 1
            datasources:
              - name: $SECRET
                type: $SECRET
                uid: $SECRET
                access: $SECRET
                url: http://user:${SECRET}@bad host/
                isDefault: $SECRET
                orgId: $SECRET
                jsonData: {a: $SECRET}
                secureJsonData: {password: $SECRET}
              - name: $SECRET
                type: x
            """,
        )
        long_secret = SECRET + "-" + "x" * 200  # too long for a name, not a uid pattern, …
        problems = check_files(folder, {"SECRET": long_secret})
        assert len(problems) >= 6
        assert not any(SECRET in line for line in problems), problems


class TestProblems:
    def test_each_problem_has_its_line(self, folder: Path) -> None:
        write(
            folder,
            "bad.yaml",
            """
            apiVersion: 1
            datasources:
              - name: ""
                type: prometheus
              - name: no-type
              - name: bad-values
                type: prometheus
                uid: "has*star"
                access: server
                url: ftp://prom
                isDefault: maybe
                orgId: first
                jsonData: [not, a, mapping]
                secureJsonData: {password: [not, a, string]}
                orgName: Main Org.
                bogus: 1
            deleteDatasources:
              - orgId: 1
            """,
        )
        assert problems_in(folder) == [
            "bad.yaml:3: name: required",
            "bad.yaml:3: url: required",
            "bad.yaml:5: type: required",
            'bad.yaml:8: uid: must be 1 to 40 letters, digits, "-" or "_"',
            'bad.yaml:9: access: must be "proxy" or "direct", got "server"',
            "bad.yaml:10: url: must be an absolute http or https URL with a host",
            "bad.yaml:11: isDefault: must be a boolean, got a string",
            "bad.yaml:12: orgId: must be a whole number, got a string",
            "bad.yaml:13: jsonData: must be an object, got an array",
            "bad.yaml:14: secureJsonData.password: must be a string, got an array",
            "bad.yaml:15: orgName: unknown field (not supported: give orgId)",
            "bad.yaml:16: bogus: unknown field",
            "bad.yaml:18: name: required",
        ]

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("datasources: []\n", "1: apiVersion: 1 is missing (older formats are not read)"),
            ("apiVersion: 2\n", "1: apiVersion: must be 1, got 2"),
            ('apiVersion: "1"\n', '1: apiVersion: must be 1, got "1"'),
            ("apiVersion: [1]\n", "1: apiVersion: must be 1, got an array"),
            ("- apiVersion: 1\n", "1: the file must be a mapping"),
            ("apiVersion: 1\ndatasources: {name: x}\n", "2: datasources must be a list"),
            ("apiVersion: 1\nprune: maybe\n", "2: prune: must be a boolean, got a string"),
            ("apiVersion: 1\nprune: 2\n", "2: prune: must be a boolean, got a number"),
            ("apiVersion: 1\nprune: [true]\n", "2: prune: must be a boolean, got an array"),
            ("apiVersion: 1\norg_id: 1\n", "2: org_id: unknown field"),
            ('apiVersion: 1\n"a\\"b": 1\n', '2: a\\"b: unknown field'),
            ("apiVersion: 1\napiVersion: 1\n", '2: duplicate key "apiVersion" in the file'),
            ("apiVersion: 1\ndeleteDatasources: [{name: x, orgId: -1}]\n",
             "2: orgId: must be a positive number, got -1"),
        ],
    )  # fmt: skip
    def test_file_level_problems(self, folder: Path, text: str, problem: str) -> None:
        write(folder, "f.yaml", text)
        assert problems_in(folder) == [f"f.yaml:{problem}"]

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("apiVersion: 1\ndatasources:\n  - name: [x\n",
             "4: invalid YAML: while parsing a flow sequence; expected ',' or ']', but got "
             "'<stream end>'"),
            ("apiVersion: 1\n\tdatasources: []\n",
             "2: invalid YAML: while scanning for the next token; found character '\\t' that "
             "cannot start any token"),
            ("apiVersion: 1\n---\napiVersion: 1\n",
             "2: invalid YAML: expected a single document in the stream; but found another "
             "document"),
            ("apiVersion: 1\ndatasources: [*nowhere]\n",
             "2: invalid YAML: found undefined alias 'nowhere'"),
        ],
    )  # fmt: skip
    def test_yaml_errors_give_pyyamls_words_and_line(
        self, folder: Path, text: str, problem: str
    ) -> None:
        write(folder, "f.yaml", text)
        assert problems_in(folder) == [f"f.yaml:{problem}"]

    @pytest.mark.parametrize(
        ("json_data", "problem"),
        [
            ("{a: .nan}", "jsonData.a: must be a finite number (JSON has no NaN or infinity)"),
            ("{a: !!binary aGk=}",
             'jsonData.a: YAML tag "tag:yaml.org,2002:binary" is not supported in jsonData'),
            ("{a: {b: 1, b: 2}}", 'duplicate key "b" in jsonData.a'),
            ("{? [x]: 1}", "a key in jsonData must be a plain value"),
            ('{a: "nul\\0"}', "jsonData.a: must not contain NUL characters or lone surrogates"),
            ("&loop {a: *loop}", f"jsonData{'.a' * 65}: nested too deeply (or contains itself)"),
        ],
    )  # fmt: skip
    def test_json_data_must_be_json(self, folder: Path, json_data: str, problem: str) -> None:
        write(
            folder,
            "j.yaml",
            f"apiVersion: 1\ndatasources:\n- name: P\n  type: x\n  jsonData: {json_data}\n",
        )
        assert problems_in(folder) == [f"j.yaml:5: {problem}"]

    def test_an_alias_bomb_is_refused(self, folder: Path) -> None:
        levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 7)]
        body = "\n".join(f"    {line}" for line in levels)
        write(
            folder,
            "bomb.yaml",
            f"apiVersion: 1\ndatasources:\n- name: P\n  type: x\n  jsonData:\n{body}\n",
        )
        [problem] = problems_in(folder)
        assert "too many values" in problem

    def test_names_and_uids_are_unique_per_org_across_files(self, folder: Path) -> None:
        write(
            folder,
            "a.yaml",
            """
            apiVersion: 1
            datasources:
              - {name: Prom, type: x, uid: p1, isDefault: true}
              - {name: Other, type: x, uid: p2, orgId: 2, isDefault: true}
            """,
        )
        write(
            folder,
            "b.yaml",
            """
            apiVersion: 1
            datasources:
              - {name: PROM, type: x}
              - {name: Fresh, type: x, uid: p1}
              - {name: Fine, type: x, uid: p1, orgId: 2}
              - {name: Also default, type: x, isDefault: true}
            """,
        )
        first = f"(also at {folder}/a.yaml:3)"
        assert problems_in(folder) == [
            f"b.yaml:3: another data source of org 1 has this name {first}",
            f"b.yaml:4: another data source of org 1 has this uid {first}",
            f"b.yaml:6: only one data source of org 1 can be the default {first}",
        ]

    def test_every_file_is_checked_and_all_problems_come_back(self, folder: Path) -> None:
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{type: x}]\n")
        write(folder, "b.yaml", "apiVersion: 1\ndatasources: [{name: y}]\n")
        write(folder, "c.yaml", "apiVersion: 1\ndatasources: [{name: z, type: z}]\n")
        assert problems_in(folder) == ["a.yaml:2: name: required", "b.yaml:2: type: required"]

    def test_bytes_that_are_not_text(self, folder: Path) -> None:
        (folder / "binary.yaml").write_bytes(b"apiVersion: 1\n\xff\xfe\n")
        [problem] = problems_in(folder)
        assert problem.startswith("binary.yaml:2: not valid utf-8 text")

    def test_a_folder_that_is_a_file(self, tmp_path: Path) -> None:
        path = tmp_path / "file"
        path.write_text("")
        assert check_files(path, {}) == [f"{path}: cannot list the folder: Not a directory"]


class TestShippedExample:
    def test_it_provisions_nothing_and_has_no_problems(self) -> None:
        files, problems = read_folder(REPO_EXAMPLE, {})
        assert problems == []
        assert files == [ProvisioningFile("example.yaml")]

    def test_uncommented_it_is_valid(self, folder: Path) -> None:
        text = (REPO_EXAMPLE / "example.yaml").read_text()
        body = text[text.index("# apiVersion") :]
        uncommented = "\n".join(
            line.removeprefix("#").removeprefix(" ") for line in body.splitlines()
        )
        (folder / "example.yaml").write_text(uncommented)
        environ = {
            "INFLUX_URL": "http://influx:8086",
            "INFLUX_BASIC_USER": "basic",
            "INFLUX_PASSWORD": "pw",
            "INFLUX_BASIC_PASSWORD": SECRET,
        }
        file = only_file(folder, environ)
        assert file.prune is True
        assert [ref.name for ref in file.deletes] == ["Old Prometheus"]
        prometheus, influx = (source.spec for source in file.sources)
        assert (prometheus.uid, prometheus.is_default, prometheus.read_only) == (
            "prometheus-main",
            True,
            True,
        )
        assert influx.url == "http://influx:8086"
        assert influx.secure_json_data["basicAuthPassword"] == SECRET
        assert influx.secure_json_data["httpHeaderValue1"] == "tenant-$1"
