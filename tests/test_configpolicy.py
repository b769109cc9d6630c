"""The configuration policy on its own: every spelling of "run remote code", and what stays allowed."""

from __future__ import annotations

import json

import pytest

from chromaguard.configpolicy import ConfigPolicy, checks
from chromaguard.routes import Route, canonical_segments, classify

CREATE = Route("create_collection", "write", "t", "d")
MODIFY = Route("modify_collection", "write", "t", "d", "x", by_id=True)
UNKNOWN = Route("unknown", "admin")


def ef(**kwargs: object) -> dict[str, object]:
    return {"type": "known", "name": "sentence_transformer",
            "config": {"model_name": "m", "device": "cpu", "normalize_embeddings": False, "kwargs": kwargs}}


@pytest.mark.parametrize("value", [True, 1, "true", "false", "yes", [1], {"a": 1}, 0.5])
def test_any_truthy_trust_remote_code_is_refused(value: object) -> None:
    body = json.dumps({"name": "c", "configuration": {"embedding_function": ef(trust_remote_code=value)}})
    why = ConfigPolicy().refusal(CREATE, body.encode())
    assert why is not None and why.startswith("configuration.embedding_function.config.kwargs.trust_remote_code")


@pytest.mark.parametrize("value", [False, None, 0, ""])
def test_a_falsy_trust_remote_code_is_allowed(value: object) -> None:
    body = json.dumps({"name": "c", "configuration": {"embedding_function": ef(trust_remote_code=value)}})
    assert ConfigPolicy().refusal(CREATE, body.encode()) is None


@pytest.mark.parametrize("key", ["trust_remote_code", "Trust_Remote_Code", "TRUST-REMOTE-CODE"])
def test_spellings_of_the_key(key: str) -> None:
    body = json.dumps({"new_configuration": {"embedding_function": ef(model_kwargs={key: True})}})
    assert ConfigPolicy().refusal(MODIFY, body.encode()) is not None


def test_json_inside_a_string_is_read_too() -> None:
    inner = json.dumps({"embedding_function": ef(trust_remote_code=True)})
    body = json.dumps({"name": "c", "metadata": {"configuration_json": inner}})
    why = ConfigPolicy().refusal(CREATE, body.encode())
    assert why is not None and why.startswith("metadata.configuration_json.embedding_function")


def test_duplicate_keys_are_refused_whatever_their_values() -> None:
    body = b'{"name": "c", "configuration": {"hnsw": {"space": "l2"}, "hnsw": {"space": "ip"}}}'
    assert "appears twice" in (ConfigPolicy().refusal(CREATE, body) or "")


def test_depth_is_bounded() -> None:
    deep: object = True
    for _ in range(200):
        deep = {"x": deep}
    assert "nested too deeply" in (ConfigPolicy().refusal(CREATE, json.dumps({"c": deep}).encode()) or "")
    assert "nested too deeply" in (ConfigPolicy().refusal(CREATE, b"[" * 100_000) or "")


def test_bodies_that_are_not_json() -> None:
    policy = ConfigPolicy()
    assert policy.refusal(CREATE, b"") is None  # the engine answers that one itself
    assert "not valid JSON" in (policy.refusal(CREATE, b"name=c") or "")
    assert "not valid JSON" in (policy.refusal(MODIFY, b"\xff\xfe") or "")
    # The engine reads every body as JSON and skips fields it does not need unread: a body we
    # cannot read whole could hide what it stores, whatever the route.
    for route in (UNKNOWN, None):
        assert "not valid JSON" in (policy.refusal(route, b"plain text") or "")
        assert "not valid JSON" in (policy.refusal(route, b'{"junk": "\xff", "name": "c"}') or "")
        assert "not valid JSON" in (policy.refusal(route, b'{"junk": ' + b"9" * 5000 + b', "name": "c"}') or "")
    assert "must be a JSON object" in (policy.refusal(CREATE, b'["c", null]') or "")


@pytest.mark.parametrize("body", [
    {"name": "c", "configuration": {"embedding_function": ["known", "open_clip", {"model_name": "m"}]}},
    {"name": "c", "configuration": [None, None, {"type": "known", "name": "open_clip", "config": {}}]},
    {"new_configuration": [None, None, {"type": "known", "name": "open_clip", "config": {}}]},
    {"name": "c", "schema": {"keys": {"#embedding": {"float_list": [[True, {"space": "l2"}]]}}}},
    {"name": "c", "configuration": {"embedding_function": "known"}},
])
def test_structs_written_as_arrays_are_refused(body: dict[str, object]) -> None:
    """serde takes a struct as an array of its fields in order, so an array could hide a name."""
    why = ConfigPolicy(("openai",)).refusal(CREATE, json.dumps(body).encode())
    assert why is not None and ("array where the engine expects an object" in why or "JSON object" in why), why


def test_arrays_inside_a_function_config_are_data() -> None:
    body = {"name": "c", "configuration": {"embedding_function": {
        "type": "known", "name": "openai", "config": {"model_name": "m", "dimensions": [1, 2],
                                                      "kwargs": {"headers": [["a", "b"]]}}}}}
    assert ConfigPolicy(("openai",)).refusal(CREATE, json.dumps(body).encode()) is None
    body["configuration"]["embedding_function"]["config"]["kwargs"]["list"] = [  # type: ignore[index]
        {"trust_remote_code": True}]
    assert "trust_remote_code" in (ConfigPolicy().refusal(CREATE, json.dumps(body).encode()) or "")


def test_allow_list_names_the_field_and_the_setting() -> None:
    policy = ConfigPolicy(("openai",))
    body = json.dumps({"name": "c", "schema": {"keys": {"#embedding": {"float_list": {"vector_index": {
        "config": {"embedding_function": ef()}}}}}}})
    why = policy.refusal(CREATE, body.encode())
    assert why is not None and why.startswith("schema.keys.#embedding.float_list.vector_index.config."
                                              "embedding_function.name 'sentence_transformer'")
    assert "CHROMAGUARD_ALLOWED_EMBEDDING_FUNCTIONS=openai" in why
    for allowed in ({"type": "legacy"}, {"type": "unknown"}, {"type": "known", "name": "openai", "config": {}}):
        assert policy.refusal(CREATE, json.dumps({"configuration": {"embedding_function": allowed}}).encode()) is None


def test_stored_listing_entries_are_checked_like_requests() -> None:
    stored = {"id": "x", "name": "c", "configuration_json": {"embedding_function": ef(trust_remote_code=True)}}
    why = ConfigPolicy().refusal_in(stored, "")
    assert why is not None and why.startswith("configuration_json.embedding_function")
    assert ConfigPolicy().refusal_in({"id": "x", "configuration_json": {"embedding_function": ef()}}, "") is None


@pytest.mark.parametrize("method, path, checked", [
    ("POST", "/api/v2/tenants/t/databases/d/collections", True),
    ("PUT", "/api/v2/tenants/t/databases/d/collections/x", True),
    ("POST", "/api/v2/tenants/t/databases/d/collections/x/fork", True),
    ("POST", "/api/v2/tenants/t/databases/d/collections/x/functions/attach", True),
    ("POST", "/api/v2/tenants/t/databases/d/collections/x/add", False),
    ("POST", "/api/v2/tenants/t/databases/d/collections/x/query", False),
    ("GET", "/api/v2/tenants/t/databases/d/collections", False),
    ("GET", "/api/v2/collections", False),
    ("DELETE", "/api/v2/collections", True),
])
def test_which_requests_are_checked(method: str, path: str, checked: bool) -> None:
    segments = canonical_segments(path.encode())
    assert segments is not None
    assert checks(method, classify(method, segments)) is checked
    assert checks("POST", None) is True  # a path we could not classify: checked too
    assert checks("GET", None) is False  # the engine reads no body on GET


def test_key_names_cannot_pass_for_structure() -> None:
    """A schema key may be named anything, a path-like name included: where a value sits is
    read from the structure, not from the name."""
    hidden = {"type": "known", "name": "huggingface_server", "config": {"url": "http://attacker/steal"}}
    body = {"name": "c", "schema": {"defaults": {}, "keys": {"x.embedding_function.config.y": {"float_list": {
        "vector_index": {"enabled": False, "config": [None, hidden, None, None, None]}}}}}}
    why = ConfigPolicy(("openai",)).refusal(CREATE, json.dumps(body).encode())
    assert why is not None and "array where the engine expects an object" in why, why
    assert '"x.embedding_function.config.y"' in why  # an odd key is quoted in the message
    by_type = {"name": "c", "schema": {"keys": {"k": {"float_list": {"vector_index": {"config": {"ef": hidden}}}}}}}
    why = ConfigPolicy(("openai",)).refusal(CREATE, json.dumps(by_type).encode())
    assert why is not None and "'huggingface_server' is not an allowed" in why, why
    # Inside a function's own config, a "known"-looking object is data, as is any array.
    data = {"name": "c", "configuration": {"embedding_function": {"type": "known", "name": "openai", "config": {
        "extra": {"type": "known", "name": "whatever"}, "list": [[1], [2]]}}}}
    assert ConfigPolicy(("openai",)).refusal(CREATE, json.dumps(data).encode()) is None
