"""``doctor --fix`` writes only its fixes: each way a YAML round trip would change other bytes,
each comment rule, and the settings whose rename would open access (left to a human)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

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


def test_flow_lists_anchors_and_document_markers_elsewhere_are_left_as_written(tmp_path: Path) -> None:
    before = textwrap.dedent(UNRELATED).lstrip("\n")
    after = _fixed(tmp_path, UNRELATED)
    assert _diff(before, after) == (["      - IS_PERSISTENT=TRUE"], [])
    assert after == before.replace("      - IS_PERSISTENT=TRUE\n", "")


def test_a_comment_above_a_removed_setting_goes_with_it_one_above_a_group_stays(tmp_path: Path) -> None:
    after = _fixed(tmp_path, """
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            volumes: ["d:/data"]
            healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
            environment:
              # telemetry off
              - ANONYMIZED_TELEMETRY=False

              # the server
              - IS_PERSISTENT=TRUE
              - CHROMA_PORT=8000
        """)
    assert "# telemetry off" not in after and "ANONYMIZED_TELEMETRY" not in after
    assert "      # the server\n      - CHROMA_PORT=8000\n" in after, "its group lives on: the comment stays"


def test_a_comment_naming_a_renamed_setting_is_updated(tmp_path: Path) -> None:
    after = _fixed(tmp_path, """
        services:
          chroma:
            image: chromadb/chroma:1.5.9
            volumes: ["d:/data"]
            healthcheck: {test: ["CMD", "bash", "-c", "</dev/tcp/127.0.0.1/8000"], start_period: 60s}
            environment:
              # CHROMA_SERVER_HTTP_PORT: where it listens
              - CHROMA_SERVER_HTTP_PORT=8000
        """)
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
