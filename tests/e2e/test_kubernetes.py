"""The Kubernetes manifests (deploy/kubernetes): built with kustomize, linted with yamllint,
validated against the Kubernetes API schemas (kubernetes-validate), and checked for what a
running chromaguard needs: probes on its health endpoints, the data dir on the volume claim, the
credentials file from its Secret, settings chromaguard accepts, selectors that match."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from chromaguard.config.settings import load_settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def _build(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` where kubectl is; else the resources as kustomization.yaml lists them
    (the base uses no transformers, so that is what kustomize builds)."""
    folder = K8S / overlay
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        text = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
        return [d for d in YAML(typ="safe").load_all(text) if d]
    docs: list[dict[str, Any]] = []
    for resource in YAML(typ="safe").load((folder / "kustomization.yaml").read_text())["resources"]:
        path = folder / resource
        if path.is_dir():
            docs += _build(str(path.relative_to(K8S)))
        else:
            docs += [d for d in YAML(typ="safe").load_all(path.read_text()) if d]
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _build("base")


def test_the_manifests_pass_yamllint() -> None:
    config = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
              "comments: {min-spaces-from-content: 1}, braces: {max-spaces-inside: 1}}}")
    done = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-d", config, str(K8S)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", ["base", "monitoring"])
def test_every_built_manifest_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = _build(overlay)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):  # a CRD's: not in the API schemas
            assert doc["kind"] == "ServiceMonitor" and doc["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_statefulset_runs_what_chromaguard_needs(base: list[dict[str, Any]]) -> None:
    statefulset = _one(base, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    # Settings chromaguard accepts (the credentials file is the Secret's, checked below).
    settings = load_settings(env={k: v for k, v in env.items() if k != "CHROMA_SERVER_AUTH_CREDENTIALS_FILE"}
                             | {"CHROMA_SERVER_AUTH_CREDENTIALS": "placeholder"})
    port = int(env["CHROMA_SERVER_HTTP_PORT"])
    assert settings.port == port and settings.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["terminationGracePeriodSeconds"] > settings.drain_timeout, "SIGKILL must not cut the drain"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert mounts[claim] == env["PERSIST_DIRECTORY"] == str(settings.data_dir), "the data dir is the claim"
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and mounts["tmp"] == "/tmp"
    assert mounts["staging"] == env["CHROMAGUARD_SNAPSHOT_DIR"], "snapshots and the mirror on a writable volume"
    # The credentials file is the Secret's tokens.yaml, and chromaguard reads it.
    credentials = next(v for v in pod["volumes"] if v["name"] == "credentials")["secret"]
    secret = _one(base, "Secret", credentials["secretName"])
    path = Path(mounts["credentials"]) / credentials["items"][0]["path"]
    assert str(path) == env["CHROMA_SERVER_AUTH_CREDENTIALS_FILE"]
    from chromaguard.access.credentials import CredentialsError, parse_tokens

    written = secret["stringData"][credentials["items"][0]["key"]]
    with pytest.raises(CredentialsError, match="placeholder"):  # applied unedited, the pod does not start
        parse_tokens(written, "tokens.yaml")
    store = parse_tokens(written.replace("replace-with-", "r4nd0m-"), "tokens.yaml")
    assert {p.role for p in store.principals()} == {"admin", "write", "metrics"}
    # The backup settings come from their Secret, and chromaguard accepts them as written.
    backup = _one(base, "Secret", container["envFrom"][0]["secretRef"]["name"])
    load_settings(env={**env, **backup["stringData"], "CHROMA_SERVER_AUTH_CREDENTIALS": "placeholder",
                       "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": ""})


def test_services_budget_and_network_policy_select_the_pods(base: list[dict[str, Any]]) -> None:
    statefulset = _one(base, "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = _one(base, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    for service in (headless, _one(base, "Service", "chromaguard")):
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    budget = _one(base, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = _one(base, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"chromaguard-client": "true"} in [s.get("podSelector", {}).get("matchLabels") for s in sources]
    # Prometheus: a pod so labelled in a namespace so labelled, both in one peer (two peers would
    # let every pod of that namespace in).
    monitoring = [s for s in sources if "namespaceSelector" in s]
    assert monitoring == [{"namespaceSelector": {"matchLabels": {"chromaguard-monitoring": "true"}},
                           "podSelector": {"matchLabels": {"chromaguard-monitoring": "true"}}}]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_the_service_monitor_scrapes_the_service_as_the_rules_expect() -> None:
    docs = _build("monitoring")
    monitor = _one(docs, "ServiceMonitor")
    service = _one(docs, "Service", "chromaguard")
    selected = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
    assert selected == ["chromaguard"], "each pod scraped once: the headless Service is not selected"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert {"targetLabel": "job", "replacement": "chromaguard"} in endpoint["relabelings"]
