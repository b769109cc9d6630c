"""``doctor --fix`` writes only its fixes: each way a YAML round trip would change other bytes,
each comment rule, and the settings whose rename would open access (left to a human)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from chromaguard.doctor import apply_fixes, check_files


def _fixed(tmp_path: Path, text: str, name: str = "compose.yml") -> str:
    path = tmp_path / name
    path.write_bytes(textwrap.dedent(text).lstrip("\n").encode())
    changes = apply_fixes(check_files([path]))
    return changes[path][1] if path in changes else path.read_bytes().decode()


def _diff(before: str, after: str) -> tuple[list[str], list[str]]:
    old, new = before.splitlines(), after.splitlines()
    return [line for line in old if line not in new], [line for line in new if line not in old]


UNRELATED = """
---
# a stack
x-logging: &logging {driver: json-file}
services:
  web:
    image: nginx:1.27
    command: ["nginx", "-g", "daemon off;"]
    volumes: [./site:/usr/share/nginx/html:ro, ./conf:/etc/nginx/conf.d:ro]
    logging: *logging
  chroma:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    environment:
      - IS_PERSISTENT=TRUE
      - CHROMA_PORT=8000
    healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
...
"""


HEALTHY = """
services:
  chroma:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
    environment:
"""  # a Chroma service with nothing to fix but its environment, which each test adds


def test_flow_lists_anchors_and_document_markers_elsewhere_are_left_as_written(tmp_path: Path) -> None:
    before = textwrap.dedent(UNRELATED).lstrip("\n")
    after = _fixed(tmp_path, UNRELATED)
    assert _diff(before, after) == (["      - IS_PERSISTENT=TRUE"], [])
    assert after == before.replace("      - IS_PERSISTENT=TRUE\n", "")


def test_a_comment_above_a_removed_setting_goes_with_it_one_above_a_group_stays(tmp_path: Path) -> None:
    after = _fixed(tmp_path, HEALTHY + (
        "      # telemetry off\n      - ANONYMIZED_TELEMETRY=False\n\n"
        "      # the server\n      - IS_PERSISTENT=TRUE\n      - CHROMA_PORT=8000\n"))
    assert "# telemetry off" not in after and "ANONYMIZED_TELEMETRY" not in after
    assert "      # the server\n      - CHROMA_PORT=8000\n" in after, "its group lives on: the comment stays"


def test_a_comment_naming_a_renamed_setting_is_updated(tmp_path: Path) -> None:
    after = _fixed(tmp_path, HEALTHY + "      # CHROMA_SERVER_HTTP_PORT: where it listens\n"
                                       "      - CHROMA_SERVER_HTTP_PORT=8000\n")
    assert "      # CHROMA_PORT: where it listens\n      - CHROMA_PORT=8000\n" in after


def test_an_emptied_environment_goes_and_the_next_keys_comment_stays(tmp_path: Path) -> None:
    after = _fixed(tmp_path, """
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
            environment:
              - IS_PERSISTENT=TRUE
            # where the data lives
            volumes: ["d:/data"]
        """)
    assert "environment" not in after
    assert '    # where the data lives\n    volumes: ["d:/data"]\n' in after


def test_a_new_key_goes_above_the_comment_that_belongs_to_the_next_service(tmp_path: Path) -> None:
    after = _fixed(tmp_path, """
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            volumes: ["d:/data"]

          # ---- the app ----
          app:
            image: app:1
        """)
    head, _, tail = after.partition("\n\n  # ---- the app ----\n  app:\n")
    assert "    healthcheck:\n" in head and "start_period: 60s" in head and "healthcheck" not in tail


def test_crlf_line_ends_and_a_missing_final_newline_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_bytes(b"services:\r\n  chroma:\r\n    image: chromadb/chroma:1.5.9\r\n    volumes: [\"d:/data\"]\r\n"
                     b"    environment: [IS_PERSISTENT=TRUE, CHROMA_PORT=8000]\r\n"
                     b"    healthcheck: {test: [\"CMD\", \"bash\", \"-c\", \"</dev/tcp/127.0.0.1/8000\"]}")
    after = apply_fixes(check_files([path]))[path][1]
    assert after.count("\n") == after.count("\r\n") and not after.endswith("\n")
    assert "    image: chromadb/chroma:1.5.9\r\n" in after


@pytest.mark.parametrize("setting, why", [
    ('CHROMA_SERVER_CORS_ALLOW_ORIGINS=["*"]', "call the database from a user's browser"),
    ('CHROMA_SERVER_CORS_ALLOW_ORIGINS=["https://app.example.com"]', "https://app.example.com"),
    ("ALLOW_RESET=TRUE", "wipe the whole database"),
])
def test_a_rename_that_would_open_access_is_a_decision_not_a_fix(tmp_path: Path, setting: str, why: str) -> None:
    text = f"""
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            volumes: ["d:/data"]
            healthcheck: {{test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}}
            environment:
              - '{setting}'
        """
    path = tmp_path / "compose.yml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    report = check_files([path])
    [decision] = [f for f in report.findings if f.rule.id == "CG208"]
    assert why in decision.message and not decision.fixable and "decide: remove" in decision.fix
    assert not [f for f in report.findings if f.rule.id == "CG201"]
    assert apply_fixes(report) == {}, "the file is left as it was"


def test_a_rename_that_narrows_or_changes_nothing_is_still_applied(tmp_path: Path) -> None:
    after = _fixed(tmp_path, """
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            volumes: ["d:/data"]
            healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
            environment: [ALLOW_RESET=FALSE, "CHROMA_SERVER_CORS_ALLOW_ORIGINS=[]"]
        """)
    assert "CHROMA_ALLOW_RESET=FALSE" in after and "CHROMA_CORS_ALLOW_ORIGINS=[]" in after


@pytest.mark.parametrize("tag, calls_curl_ok", [("0.4.24", False), ("0.5.0", True), ("0.5.23", True),
                                                ("0.6.3", True), ("1.5.9", False)])
def test_curl_is_in_the_images_that_have_it(tmp_path: Path, tag: str, calls_curl_ok: bool) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(f"""services:
  chroma:
    image: chromadb/chroma:{tag}
    volumes: ["d:/{'data' if tag.startswith('1') else 'chroma/chroma'}"]
    healthcheck: {{test: ["CMD", "curl", "-f", "http://localhost:8000/api/v2/heartbeat"], start_period: 60s}}
""")
    rules = {f.rule.id for f in check_files([path]).findings}
    assert ("CG101" not in rules) is calls_curl_ok


def test_an_ephemeral_stack_with_a_tmpfs_at_the_data_path_is_not_told_to_add_a_volume(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text("services:\n  chroma:\n    image: chromadb/chroma:1.5.9\n    tmpfs: [/data]\n"
                    "    healthcheck: {test: [CMD, bash, -c, '</dev/tcp/127.0.0.1/8000'], start_period: 60s}\n")
    assert {f.rule.id for f in check_files([path]).findings} == set()
    path.write_text(path.read_text().replace("tmpfs: [/data]", "tmpfs: /tmp"))
    assert {f.rule.id for f in check_files([path]).findings} == {"CG302"}, "a tmpfs elsewhere is not intent"


def _layout(step: int, offset: int, marker: bool) -> str:
    """One compose file in a given layout: mapping indent ``step``, list items ``offset`` in."""
    i = lambda n: " " * (step * n)  # noqa: E731
    seq = lambda n: " " * (step * n + offset)  # noqa: E731
    lines = ["---"] if marker else []
    lines += ["services:", i(1) + "chroma:", i(2) + "image: chromadb/chroma:1.5.9", i(2) + "volumes:",
              seq(2) + "- chroma_data:/data", i(2) + "environment:", seq(2) + "- IS_PERSISTENT=TRUE",
              seq(2) + "- CHROMA_SERVER_HTTP_PORT=8000", seq(2) + "- CHROMA_LISTEN_ADDRESS=0.0.0.0",
              i(1) + "app:", i(2) + "image: app:1", i(2) + "depends_on:", seq(2) + "- chroma",
              "volumes:", i(1) + "chroma_data:"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("step, offset, marker", [(2, 0, False), (2, 2, True), (3, 0, False), (3, 3, True),
                                                  (4, 0, True), (4, 2, False), (4, 4, False)])
def test_every_layout_keeps_its_own_indentation(tmp_path: Path, step: int, offset: int, marker: bool) -> None:
    path = tmp_path / "compose.yml"
    before = _layout(step, offset, marker)
    path.write_text(before)
    report = check_files([path])
    after = apply_fixes(report)[path][1]
    assert report.relaid == [], "carried onto the file as written, not rewritten"
    fixed = YAML(typ="safe", pure=True).load(after)
    assert fixed["services"]["chroma"]["environment"] == ["CHROMA_PORT=8000", "CHROMA_LISTEN_ADDRESS=0.0.0.0"]
    assert fixed["services"]["chroma"]["healthcheck"]["start_period"] == "60s"
    assert fixed["services"]["app"]["depends_on"] == {"chroma": {"condition": "service_healthy"}}
    removed, added = _diff(before, after)
    assert removed == [" " * (step * 2 + offset) + "- IS_PERSISTENT=TRUE",
                       " " * (step * 2 + offset) + "- CHROMA_SERVER_HTTP_PORT=8000",
                       " " * (step * 2 + offset) + "- chroma"]
    assert " " * (step * 2 + offset) + "- CHROMA_PORT=8000" in added
    assert " " * (step * 2) + "healthcheck:" in added and " " * (step * 3) + "start_period: 60s" in added
    assert before.startswith("---") == after.startswith("---")


def test_a_text_that_would_not_mean_the_fixed_document_is_never_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import chromaguard.doctor as doctor

    path = tmp_path / "compose.yml"
    path.write_text(_layout(2, 2, False))
    monkeypatch.setattr(doctor, "carry", lambda original, base, after: original.replace("services:", "services: ["))
    report = check_files([path])
    after = apply_fixes(report)[path][1]
    assert report.relaid == [path]
    assert YAML(typ="safe", pure=True).load(after) == YAML(typ="safe", pure=True).load(report.files[0].dump())


def test_a_block_scalar_keeps_its_trailing_blank_lines_when_a_key_is_added_after_it(tmp_path: Path) -> None:
    after = _fixed(tmp_path, """
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            volumes: ["d:/data"]
            entrypoint: |+
              echo hi


          app:
            image: app:1
        """)
    assert YAML(typ="safe", pure=True).load(after)["services"]["chroma"]["entrypoint"] == "echo hi\n\n\n"


@pytest.mark.parametrize("text", [
    """
    x-hc: &hc {test: ["CMD", "curl", "-f", "http://localhost:8000/api/v2/heartbeat"], start_period: 60s}
    services:
      chroma: {image: "chromadb/chroma:1.5.9", volumes: ["d:/data"], healthcheck: *hc}
      ollama: {image: "ollama/ollama:0.5.7", healthcheck: *hc}
    """,
    """
    x-env: &env {IS_PERSISTENT: "TRUE"}
    services:
      chroma:
        image: chromadb/chroma:1.5.9
        volumes: ["d:/data"]
        healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
        environment:
          <<: *env
          FOO: bar
    """,
])
def test_what_an_anchor_shares_is_fixed_by_hand_never_behind_the_other_users_back(tmp_path: Path, text: str) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    report = check_files([path])
    shared = [f for f in report.findings if "an anchor, alias or merge key shares" in f.fix]
    assert shared and not any(f.fixable for f in shared)
    changes = apply_fixes(report)
    before = path.read_text()
    after = changes[path][1] if path in changes else before
    assert before.split("services:")[0] == after.split("services:")[0], "the anchor is as it was"
    assert after.count("curl") == before.count("curl") and after.count("IS_PERSISTENT") == before.count(
        "IS_PERSISTENT")


def _env_findings(tmp_path: Path, image: str, *settings: str) -> list[tuple[str, bool, str]]:
    path = tmp_path / "compose.yml"
    volume = "/data" if image.startswith("1") else "/chroma/chroma"
    path.write_text(f"services:\n  c:\n    image: chromadb/chroma:{image}\n    volumes: ['d:{volume}']\n"
                    "    healthcheck: {test: [CMD, bash, -c, '</dev/tcp/127.0.0.1/8000'], start_period: 60s}\n"
                    "    environment:\n" + "".join(f"      - '{s}'\n" for s in settings))
    return [(f.rule.id, f.fixable, f.message + " | " + f.fix) for f in check_files([path]).findings]


@pytest.mark.parametrize("setting", ["ALLOW_RESET=${ALLOW_RESET:-true}", "ALLOW_RESET", "ALLOW_RESET=t",
                                     "ALLOW_RESET=${RESET}", "CHROMA_SERVER_CORS_ALLOW_ORIGINS",
                                     "CHROMA_SERVER_CORS_ALLOW_ORIGINS=${ORIGINS:-[]}"])
def test_a_value_the_host_decides_is_not_switched_on_either(tmp_path: Path, setting: str) -> None:
    [(rule, fixable, _)] = _env_findings(tmp_path, "1.5.9", setting)
    assert (rule, fixable) == ("CG208", False)


def test_auth_names_are_renamed_only_to_a_name_the_line_reads(tmp_path: Path) -> None:
    found = _env_findings(tmp_path, "0.5.23", "CHROMA_SERVER_AUTH_IGNORE_PATHS={}",
                          "CHROMA_SERVER_AUTH_TOKEN_TRANSPORT_HEADER=X-Chroma-Token",
                          "CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER=x")
    assert [(rule, fixable) for rule, fixable, _ in found] == [("CG201", True), ("CG207", False)], \
        "0.5 reads CHROMA_SERVER_AUTH_IGNORE_PATHS as it is; no 0.5 name for the credentials provider"
    assert "rename it to CHROMA_AUTH_TOKEN_TRANSPORT_HEADER" in found[0][2]


@pytest.mark.parametrize("setting, fixable", [
    ("CHROMA_SERVER_HTTP_PORT=8000", True), ("CHROMA_SERVER_HTTP_PORT=8080", False),
    ("CHROMA_SERVER_HOST=0.0.0.0", True), ("CHROMA_SERVER_HOST=127.0.0.1", False),
    ("CHROMA_OTEL_COLLECTION_ENDPOINT=http://otel:4317", True), ("CHROMA_OTEL_COLLECTION_ENDPOINT=${OTEL}", False),
    ("CHROMA_OTEL_COLLECTION_ENDPOINT=", False), ("CHROMA_OTEL_COLLECTION_ENDPOINT=${OTEL:-http://otel:4317}", True),
])
def test_a_rename_that_would_change_what_runs_is_a_decision(tmp_path: Path, setting: str, fixable: bool) -> None:
    [(rule, got, text)] = [f for f in _env_findings(tmp_path, "1.5.9", setting) if f[0] == "CG201"]
    assert got is fixable and (fixable or "decide:" in text)


def test_two_ignored_names_that_would_become_one(tmp_path: Path) -> None:
    same = _env_findings(tmp_path, "1.5.9", "CHROMA_SERVER_OTEL_ENDPOINT=http://a:4317",
                         "CHROMA_OTEL_COLLECTION_ENDPOINT=http://a:4317")
    assert [fixable for _, fixable, _ in same] == [True, True], "the same value: the second is only removed"
    after = apply_fixes(check_files([tmp_path / "compose.yml"]))[tmp_path / "compose.yml"][1]
    assert after.count("CHROMA_OPEN_TELEMETRY__ENDPOINT") == 1 and "CHROMA_OTEL_COLLECTION" not in after
    differ = _env_findings(tmp_path, "1.5.9", "CHROMA_SERVER_OTEL_ENDPOINT=http://a:4317",
                           "CHROMA_OTEL_COLLECTION_ENDPOINT=http://b:4317")
    assert [fixable for _, fixable, _ in differ] == [True, False] and "keep one" in differ[1][2]


def test_removing_a_key_that_shadows_a_merged_one_is_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(textwrap.dedent("""
        x-auth: &auth
          CHROMA_SERVER_AUTHN_PROVIDER: chromadb.auth.token_authn.TokenAuthenticationServerProvider
        services:
          chroma:
            image: chromadb/chroma:0.5.20
            volumes: ["d:/chroma/chroma"]
            environment:
              <<: *auth
              CHROMA_SERVER_AUTHN_PROVIDER: none
            healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
        """).lstrip("\n"))
    report = check_files([path])
    [none] = [f for f in report.findings if f.rule.id == "CG204"]
    assert not none.fixable and "merge key" in none.fix, "removing it would switch the merged provider on"
    assert apply_fixes(report) == {}


@pytest.mark.parametrize("settings", [["IS_PERSISTENT=TRUE", "IS_PERSISTENT=TRUE"],
                                      ["IS_PERSISTENT=TRUE", "IS_PERSISTENT=FALSE"]])
def test_a_name_listed_twice_is_fixed_at_once(tmp_path: Path, settings: list[str]) -> None:
    after = _fixed(tmp_path, HEALTHY + "".join(f"      - {s}\n" for s in settings) + "      - CHROMA_PORT=8000\n")
    assert "IS_PERSISTENT" not in after and "CHROMA_PORT=8000" in after
    path = tmp_path / "compose.yml"
    path.write_text(after)
    assert not [f for f in check_files([path]).findings if f.fixable], "nothing left for a second run"


def test_a_name_with_spaces_around_its_equals_sign_is_another_name_as_compose_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(textwrap.dedent(HEALTHY).lstrip("\n") + "      - IS_PERSISTENT = TRUE\n")
    assert [f.rule.id for f in check_files([path]).findings] == [], "'IS_PERSISTENT ' is not IS_PERSISTENT"


@pytest.mark.parametrize("image, setting", [
    ("0.5.23", "CHROMA_SERVER_AUTH_PROVIDER=chromadb.auth.token.TokenAuthServerProvider"),
    ("0.4.24", "CHROMA_SERVER_AUTHN_PROVIDER=chromadb.auth.token_authn.TokenAuthenticationServerProvider"),
    ("1.5.9", "ALLOW_RESET=no"), ("1.5.9", "ALLOW_RESET=0"), ("1.5.9", "CHROMA_SERVER_CORS_ALLOW_ORIGINS="),
    ("1.5.9", "CHROMA_OTEL_COLLECTION_ENDPOINT=${E:- }"), ("1.5.9", 'CHROMA_OTEL_COLLECTION_ENDPOINT=${E:-""}'),
])
def test_a_rename_to_a_value_that_may_not_start_is_a_decision(tmp_path: Path, image: str, setting: str) -> None:
    [(rule, fixable, text)] = [f for f in _env_findings(tmp_path, image, setting) if f[0] == "CG201"]
    assert not fixable and "decide:" in text


def test_a_new_key_is_indented_like_its_siblings_where_they_differ_from_the_file(tmp_path: Path) -> None:
    after = _fixed(tmp_path, """
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            volumes: ["d:/data"]
            healthcheck:
                test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"]
                interval: 30s
        """)
    assert "        interval: 30s\n        start_period: 60s\n" in after
