"""chromaguard doctor: the seed's compose files, every rule, --fix, SARIF, --live, init."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.fake_ollama import FakeOllama
from support.procs import BareEngine, Guard, clean_env, cli, free_port

from chromaguard.doctor import RULES, check_files, reference_markdown
from chromaguard.doctor.checks import working_test
from chromaguard.doctor.knowledge import CHROMA, Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def doctor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return cli("doctor", *args, timeout=120, cwd=cwd)


def found(path: Path) -> set[tuple[str, int]]:
    return {(f.rule.id, f.location.line) for f in check_files([path]).findings}


def test_seed_main_block_every_defect_with_its_line() -> None:
    assert found(FIXTURES / "seed-main.yml") == {
        ("CG107", 4),                      # chromadb/chroma:latest
        ("CG301", 9),                      # volume at /chroma/chroma
        ("CG201", 11), ("CG201", 12), ("CG208", 13),  # HOST / HTTP_PORT ignored; CORS: renaming opens it
        ("CG206", 13),                     # CORS ["*"]
        ("CG201", 14),                     # ANONYMIZED_TELEMETRY
        ("CG201", 16), ("CG201", 17), ("CG201", 18),  # CHROMA_SERVER_OTEL_* never existed
        ("CG205", 17),                     # OTel endpoint localhost
        ("CG204", 20), ("CG204", 21), ("CG204", 22),  # auth values `none`
        ("CG101", 25), ("CG103", 25),      # curl (not in the image) on /api/v1 (410)
        ("CG101", 36),                     # curl in the ollama image
        ("CG304", 44),                     # depends_on without service_healthy
    }


def test_seed_llm_tuning_block() -> None:
    assert found(FIXTURES / "seed-llm-tuning.yml") == {
        ("CG302", 2), ("CG107", 3), ("CG303", 7),
        ("CG201", 9), ("CG201", 10), ("CG208", 11), ("CG206", 11), ("CG201", 12),
        ("CG201", 14), ("CG201", 15), ("CG201", 16),
        ("CG202", 17),                     # token auth configured: Chroma 1.x has none
        ("CG203", 18),                     # chromadb.auth.token.TokenAuthServer never existed
        ("CG101", 22), ("CG103", 22), ("CG105", 22),
    }


def test_seed_ollama_block() -> None:
    assert found(FIXTURES / "seed-ollama.yml") == {("CG101", 7)}


def test_text_output_names_rule_location_why_and_fix() -> None:
    result = doctor(str(FIXTURES / "seed-main.yml"))
    assert result.returncode == 1
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{FIXTURES / 'seed-main.yml'}:4:5: CG107 warning [chromadb]")
    assert "    why: " in result.stdout and "    fix: " in result.stdout
    assert "18 finding(s)" in result.stdout


def test_fix_keeps_comments_and_leaves_nothing_fixable(tmp_path: Path) -> None:
    for name in ("seed-main.yml", "seed-llm-tuning.yml", "seed-ollama.yml"):
        copy = tmp_path / name
        shutil.copy(FIXTURES / name, copy)
        original = copy.read_text()
        result = doctor("--fix", str(copy))
        fixed = copy.read_text()
        assert fixed != original
        # The one comment above lines that all went (the three `none` auth settings) goes with them.
        gone = {"# Дополнительные настройки для production"} if name == "seed-main.yml" else set()
        for line in original.splitlines():
            if line.strip().startswith("#"):
                assert (line in fixed.splitlines()) is (line.strip() not in gone), f"{name}: {line!r}"
        again = check_files([copy]).findings
        assert not [f for f in again if f.fixable], [f.rule.id for f in again if f.fixable]
        assert "fixed:" in result.stderr
        # quoting kept where nothing was fixed
        if name == "seed-main.yml":
            assert '- "8006:8000"' in fixed and "chromadb_data:/data" in fixed
            assert "CHROMA_OPEN_TELEMETRY__SERVICE_NAME=relink-chromadb" in fixed
            assert "condition: service_healthy" in fixed


def test_diff_prints_without_writing(tmp_path: Path) -> None:
    copy = tmp_path / "compose.yml"
    shutil.copy(FIXTURES / "seed-main.yml", copy)
    before = copy.read_text()
    result = doctor("--diff", str(copy))
    assert result.returncode == 0
    assert "-      - CHROMA_SERVER_HOST=0.0.0.0" in result.stdout
    assert "+      - CHROMA_LISTEN_ADDRESS=0.0.0.0" in result.stdout
    assert copy.read_text() == before


def test_fixed_chroma_healthcheck_really_works(bare: BareEngine) -> None:
    """The bash /dev/tcp check that --fix writes, run against a real engine and a dead port."""
    image = Image(CHROMA, "1.x", (1, 5, 9), False, "chromadb/chroma:1.5.9")
    ok = subprocess.run(working_test(image, bare.port)[1:], capture_output=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run(working_test(image, free_port())[1:], capture_output=True, timeout=20)
    assert dead.returncode != 0


def _compose(tmp_path: Path, body: str, name: str = "docker-compose.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


GOOD_CHROMA = """
services:
  chroma:
    image: chromadb/chroma:1.5.9
    volumes: ["chroma-data:/data"]
    healthcheck:
      test: ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000"]
      start_period: 60s
"""

# (rule, a compose that has the defect, a compose that does not)
CASES = [
    ("CG101", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    healthcheck: {test: ["CMD", "wget", "-q", "http://localhost:8000/api/v2/heartbeat"], start_period: 60s}
""", GOOD_CHROMA),
    ("CG102", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    healthcheck: {test: "echo > /dev/tcp/localhost/8000", start_period: 60s}
""", GOOD_CHROMA),
    ("CG103", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    healthcheck: {test: ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000; echo /api/v1/heartbeat"], start_period: 60s}
""", """
services:
  c:
    image: chromadb/chroma:0.5.23
    volumes: ["d:/chroma/chroma"]
    healthcheck: {test: ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8000/api/v1/heartbeat')"], start_period: 60s}
"""),
    ("CG104", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
""", GOOD_CHROMA),
    ("CG105", """
services:
  o:
    image: ollama/ollama:0.12.3
    healthcheck: {test: ["CMD", "ollama", "list"]}
""", """
services:
  o:
    image: ollama/ollama:0.12.3
    healthcheck: {test: ["CMD", "ollama", "list"], start_period: 120s}
"""),
    ("CG106", """
services:
  o:
    image: ollama/ollama:0.12.3
    healthcheck: {test: ["CMD", "ollama", "--version"], start_period: 120s}
""", """
services:
  o:
    image: ollama/ollama:0.12.3
    healthcheck: {test: ["CMD-SHELL", "ollama list || exit 1"], start_period: 120s}
"""),
    ("CG107", """
services:
  c:
    image: chromadb/chroma
    volumes: ["d:/data"]
""", GOOD_CHROMA),
    ("CG108", """
services:
  c:
    image: chromadb/chroma:0.5.15
    volumes: ["d:/chroma/chroma"]
    healthcheck: {test: ["CMD", "curl", "-f", "http://localhost:8000/api/v2/heartbeat"], start_period: 60s}
""", """
services:
  c:
    image: chromadb/chroma:0.5.16
    volumes: ["d:/chroma/chroma"]
    healthcheck: {test: ["CMD", "curl", "-f", "http://localhost:8000/api/v2/heartbeat"], start_period: 60s}
"""),
    ("CG201", """
services:
  c:
    image: chromadb/chroma:1.0.15
    volumes: ["d:/data"]
    environment: {CHROMA_SERVER_HTTP_PORT: "8000"}
""", """
services:
  c:
    image: chromadb/chroma:0.5.23
    volumes: ["d:/chroma/chroma"]
    environment: {CHROMA_SERVER_HTTP_PORT: "8000"}
"""),
    ("CG202", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    environment: [CHROMA_SERVER_AUTHN_PROVIDER=chromadb.auth.token_authn.TokenAuthenticationServerProvider]
""", """
services:
  c:
    image: chromadb/chroma:0.6.3
    volumes: ["d:/chroma/chroma"]
    environment: [CHROMA_SERVER_AUTHN_PROVIDER=chromadb.auth.token_authn.TokenAuthenticationServerProvider]
"""),
    ("CG203", """
services:
  c:
    image: chromadb/chroma:0.4.24
    volumes: ["d:/chroma/chroma"]
    environment: [CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER=chromadb.auth.token.TokenAuthServer]
""", """
services:
  c:
    image: chromadb/chroma:0.4.24
    volumes: ["d:/chroma/chroma"]
    environment: [CHROMA_SERVER_AUTH_CREDENTIALS_PROVIDER=chromadb.auth.token.TokenConfigServerAuthCredentialsProvider]
"""),
    ("CG204", """
services:
  c:
    image: chromadb/chroma:0.4.24
    volumes: ["d:/chroma/chroma"]
    environment: [CHROMA_SERVER_AUTH_PROVIDER=none]
""", """
services:
  c:
    image: chromadb/chroma:0.4.24
    volumes: ["d:/chroma/chroma"]
"""),
    ("CG205", """
services:
  g:
    image: chromaguard:0.1.0
    volumes: ["d:/data"]
    environment: [CHROMA_SERVER_OTEL_ENDPOINT=http://127.0.0.1:4317]
""", """
services:
  g:
    image: chromaguard:0.1.0
    volumes: ["d:/data"]
    environment: [CHROMA_SERVER_OTEL_ENDPOINT=http://otel-collector:4317]
"""),
    ("CG206", """
services:
  g:
    image: chromaguard:0.1.0
    volumes: ["d:/data"]
    environment: ['CHROMA_SERVER_CORS_ALLOW_ORIGINS=["*"]']
""", """
services:
  g:
    image: chromaguard:0.1.0
    volumes: ["d:/data"]
    environment: ['CHROMA_SERVER_CORS_ALLOW_ORIGINS=["https://app.example.com"]']
"""),
    ("CG207", """
services:
  c:
    image: chromadb/chroma:0.5.23
    volumes: ["d:/chroma/chroma"]
    environment: ['CHROMA_OTEL_EXPORTER_HEADERS={"x": "1"}']
""", """
services:
  c:
    image: chromadb/chroma:0.5.23
    volumes: ["d:/chroma/chroma"]
    environment: ['CHROMA_OTEL_COLLECTION_HEADERS={"x": "1"}', chroma_server_nofile=65536]
"""),
    ("CG208", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    environment: [ALLOW_RESET=TRUE]
""", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    environment: [ALLOW_RESET=FALSE]
"""),
    ("CG209", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    environment: ["CHROMA_OPEN_TELEMETRY__ENDPOINT=${OTEL_ENDPOINT}"]
""", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    environment: ["CHROMA_OPEN_TELEMETRY__ENDPOINT=${OTEL_ENDPOINT:-http://otel-collector:4317}"]
"""),
    ("CG301", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: [{type: volume, source: d, target: /chroma/chroma}]
""", """
services:
  c:
    image: chromadb/chroma:0.6.3
    volumes: ["d:/chroma/chroma"]
"""),
    ("CG302", """
services:
  c:
    image: chromadb/chroma:1.5.9
""", GOOD_CHROMA),
    ("CG303", """
services:
  c:
    image: chromadb/chroma:1.5.9
    ports: ["8000:8000"]
    volumes: ["d:/data"]
    environment: [CHROMA_SERVER_AUTH_PROVIDER=token]
""", """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
    environment: [CHROMA_SERVER_AUTH_PROVIDER=token]
"""),
    ("CG304", """
services:
  c:
    image: chromadb/chroma:1.5.9
  app:
    image: app
    depends_on: {c: {condition: service_started}}
""", """
services:
  c:
    image: chromadb/chroma:1.5.9
  app:
    image: app
    depends_on: {c: {condition: service_healthy}}
"""),
    ("CG210", """
services:
  c:
    image: python:3.11-slim
    command: sh -c "pip install chromadb==1.5.9 && uvicorn chromadb.app:app --host 0.0.0.0"
    ports: ["8000:8000"]
""", """
services:
  c:
    image: python:3.11-slim
    command: sh -c "pip install chromadb==1.5.9 && uvicorn chromadb.app:app --host 0.0.0.0"
  g:
    image: chromaguard:0.1.0
    environment: [CHROMAGUARD_UPSTREAM=http://c:8000]
    ports: ["8000:8000"]
"""),
    ("CG401", """
services:
  g:
    image: chromaguard:0.1.0
    volumes: ["d:/data"]
    environment: [CHROMA_SERVER_HTTP_PORT=80000]
""", """
services:
  g:
    image: chromaguard:0.1.0
    volumes: ["d:/data"]
    environment: [CHROMA_SERVER_HTTP_PORT=8000]
"""),
]


@pytest.mark.parametrize("rule, bad, good", CASES, ids=[c[0] for c in CASES])
def test_each_rule_positive_and_negative(tmp_path: Path, rule: str, bad: str, good: str) -> None:
    assert rule in {r for r, _ in found(_compose(tmp_path, bad, "bad.yml"))}
    assert rule not in {r for r, _ in found(_compose(tmp_path, good, "good.yml"))}


def test_every_static_rule_has_a_case() -> None:
    static = {r for r in RULES if r.startswith(("CG1", "CG2", "CG3", "CG4"))}
    assert static == {c[0] for c in CASES}


def test_overrides_merge_like_compose(tmp_path: Path) -> None:
    base = _compose(tmp_path, """
services:
  c:
    image: chromadb/chroma:1.5.9
    volumes: ["d:/data"]
""", "docker-compose.yml")
    override = _compose(tmp_path, """
services:
  c:
    healthcheck: {test: ["CMD", "curl", "http://localhost:8000/api/v2/heartbeat"], start_period: 60s}
""", "docker-compose.override.yml")
    findings = check_files([base, override]).findings
    assert [(f.rule.id, Path(f.location.file).name) for f in findings] == [("CG101", "docker-compose.override.yml")]
    result = doctor(cwd=tmp_path)  # the default files, in compose's order
    assert "docker-compose.override.yml:3:" in result.stdout and result.returncode == 1


def test_exit_codes_and_fail_on(tmp_path: Path) -> None:
    warn_only = _compose(tmp_path, GOOD_CHROMA.replace("chromadb/chroma:1.5.9", "chromadb/chroma"), "w.yml")
    assert doctor(str(warn_only)).returncode == 1
    assert doctor(str(warn_only), "--fail-on", "error").returncode == 0
    assert doctor(str(_compose(tmp_path, GOOD_CHROMA, "ok.yml"))).returncode == 0


@pytest.mark.parametrize("content, fragment", [
    ("services: [\n", "not valid YAML"),
    ("name: just-a-file\nkeys: 1\n", "not a compose file"),
])
def test_unreadable_or_non_compose_is_one_clear_error(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "x.yml"
    path.write_text(content)
    result = doctor(str(path))
    assert result.returncode == 2 and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = doctor(cwd=empty)
    assert result.returncode == 2 and "no compose file" in result.stderr


def test_json_and_sarif_output(tmp_path: Path) -> None:
    data = json.loads(doctor("--format", "json", str(FIXTURES / "seed-main.yml")).stdout)
    assert {"rule", "severity", "file", "line", "column", "why", "fix", "fixable"} <= data["findings"][0].keys()
    sarif = json.loads(doctor("--format", "sarif", str(FIXTURES / "seed-main.yml")).stdout)
    run = sarif["runs"][0]
    assert sarif["version"] == "2.1.0" and run["tool"]["driver"]["name"] == "chromaguard-doctor"
    assert len(run["results"]) == 18
    first = run["results"][0]
    assert first["ruleId"] == "CG107" and first["locations"][0]["physicalLocation"]["region"]["startLine"] == 4
    assert run["tool"]["driver"]["rules"][first["ruleIndex"]]["id"] == "CG107"


SCHEMA = ROOT / ".ci" / "cache" / "sarif-schema-2.1.0.json"


def test_sarif_validates_against_the_schema() -> None:
    if not SCHEMA.is_file():
        if os.environ.get("CI"):
            raise AssertionError(f"{SCHEMA} is missing: .ci/run fetches it")
        pytest.skip(f"{SCHEMA} not fetched here (.ci/run fetches it with npm)")
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    for fixture in ("seed-main.yml", "seed-llm-tuning.yml"):
        log = json.loads(doctor("--format", "sarif", str(FIXTURES / fixture)).stdout)
        jsonschema.validate(log, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": "2.1.0", "runs": [{"results": []}]}, schema)  # no tool: invalid


def test_explain_and_reference_page() -> None:
    result = doctor("--explain", "CG301")
    assert result.returncode == 0 and "/chroma/chroma" in result.stdout and "/data" in result.stdout
    assert doctor("--explain", "CG999").returncode == 2
    assert (ROOT / "docs" / "doctor-rules.md").read_text() == reference_markdown(), \
        "regenerate: chromaguard doctor --rules-markdown > docs/doctor-rules.md"


def test_init_writes_the_deploy_compose_and_doctor_finds_nothing(tmp_path: Path) -> None:
    result = cli("init", "--dir", str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    assert doctor(str(tmp_path / "docker-compose.yml")).stdout.strip() == "no findings"
    assert doctor(str(ROOT / "deploy" / "docker-compose.yml")).stdout.strip() == "no findings"
    for name in ("docker-compose.yml", "otel-collector.yaml", "chroma_tokens.example.json", "prometheus",
                 "grafana"):  # one copy of each
        deployed = ROOT / "deploy" / name
        assert deployed.is_symlink() and deployed.resolve() == (ROOT / "chromaguard" / "templates" / name).resolve()
    # What the compose file mounts for its monitoring profile is there too.
    for mount in ("prometheus/prometheus.yml", "prometheus/chromaguard-rules.yml", "grafana/chromaguard.json",
                  "grafana/provisioning/dashboards/chromaguard.yml"):
        assert (tmp_path / mount).read_text() == (ROOT / "deploy" / mount).read_text()
    again = subprocess.run([sys.executable, "-m", "chromaguard", "init", "--dir", str(tmp_path)],
                           capture_output=True, text=True, env=clean_env(), timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr


def test_init_builds_from_its_own_wheel_pinned_by_hash_never_by_name(tmp_path: Path) -> None:
    """The Dockerfile installs the wheel init put beside it, after checking its sha256: nothing
    named chromaguard is fetched from a package index (none of that name is ours)."""
    import hashlib
    import zipfile

    out = tmp_path / "deploy"
    result = cli("init", "--dir", str(out), timeout=180)
    assert result.returncode == 0, result.stderr
    dockerfile = (out / "Dockerfile").read_text()
    wheels = list(out.glob("chromaguard-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f'echo "{sha}  /tmp/{wheel.name}" > /tmp/SHA256SUMS && sha256sum -c /tmp/SHA256SUMS' in dockerfile
    assert f"COPY {wheel.name} /tmp/{wheel.name}" in dockerfile
    assert f"pip install --no-deps /tmp/{wheel.name}" in dockerfile
    assert "pip install chromaguard" not in dockerfile, "never by name"
    # Its dependencies from the lock beside it, each checked by hash.
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in dockerfile
    assert (out / "requirements.lock").read_text() == (ROOT / "chromaguard" / "templates" / "requirements.lock").read_text()
    # The build context is the folder, tokens and all: the builder is sent the wheel and the lock
    # alone, and git is told to leave the secrets out (where the folder has no .gitignore of its own).
    assert (out / ".dockerignore").read_text().splitlines()[1:] == ["*", "!chromaguard-*.whl", "!requirements.lock"]
    assert {"chroma_tokens.json", "chroma_metrics_token.txt"} <= set((out / ".gitignore").read_text().splitlines())
    with zipfile.ZipFile(wheel) as archive:  # this chromaguard, templates included
        names = set(archive.namelist())
        assert "chromaguard/service.py" in names and "chromaguard/templates/prometheus/chromaguard-rules.yml" in names
        assert archive.read("chromaguard/probe.py") == (ROOT / "chromaguard" / "probe.py").read_bytes()
    # Given a wheel, init copies that one; something else is refused in one line.
    again = cli("init", "--dir", str(tmp_path / "given"), "--wheel", str(wheel), timeout=60)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "given" / wheel.name).read_bytes() == wheel.read_bytes()
    (tmp_path / "evil.whl").write_bytes(b"not a wheel")
    refused = cli("init", "--dir", str(tmp_path / "evil"), "--wheel", str(tmp_path / "evil.whl"), timeout=60)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "not a chromaguard" in refused.stderr
    # A wheel whose name would be shell or Dockerfile syntax in the lines it is written into.
    odd = tmp_path / f"{wheel.name[:-4]};touch pwned.whl"
    odd.write_bytes(wheel.read_bytes())
    refused = cli("init", "--dir", str(tmp_path / "odd"), "--wheel", str(odd), timeout=60)
    assert refused.returncode != 0 and "not a chromaguard" in refused.stderr, refused.stderr
    # A .gitignore of the user's own is left as it was.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".gitignore").write_text("build/\n")
    assert cli("init", "--dir", str(mine), "--wheel", str(wheel), timeout=60).returncode == 0
    assert (mine / ".gitignore").read_text() == "build/\n"


# ---- live -------------------------------------------------------------------------------------


def _live(url: str, *extra: str) -> tuple[int, set[str], str]:
    result = doctor("--live", url, "--format", "json", *extra)
    data = json.loads(result.stdout)
    return result.returncode, {f["rule"] for f in data["findings"]}, result.stdout


def test_live_bare_engine_is_open_and_v1_gone(bare: BareEngine) -> None:
    code, rules, _ = _live(bare.url)
    assert code == 1 and {"CG501", "CG503"} <= rules
    text = doctor("--live", bare.url).stdout
    assert "chroma;" in text and "v1_heartbeat=410" in text and "data_without_credentials=200" in text


def test_live_chromaguard_with_auth_is_clean(tmp_path: Path) -> None:
    tokens = tmp_path / "t.json"
    tokens.write_text('["live-token"]')
    with Guard(env={"CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens),
                    "CHROMA_SERVER_CORS_ALLOW_ORIGINS": '["https://app.example.com"]'}) as g:
        code, rules, out = _live(g.url, "--token", "live-token")
        assert rules == set() and code == 0, out
        text = doctor("--live", g.url, "--token", "live-token").stdout
        assert "chromaguard;" in text and "data_without_credentials=401" in text and "data_with_token=200" in text
    with Guard(env={"CHROMA_SERVER_CORS_ALLOW_ORIGINS": '["*"]'}) as open_cors:
        assert {"CG501", "CG502"} <= _live(open_cors.url)[1]


def test_live_ollama_models() -> None:
    server = FakeOllama(["nomic-embed-text:latest"])
    try:
        assert _live(server.url, "--require-model", "nomic-embed-text")[1] == set()
        code, rules, _ = _live(server.url, "--require-model", "llama3.2")
        assert code == 1 and rules == {"CG505"}
    finally:
        server.stop()
    assert "CG504" in _live(f"http://127.0.0.1:{free_port()}")[1]
