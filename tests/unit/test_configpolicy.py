"""The configuration policy on its own: every spelling of "run remote code", and what stays allowed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chromaguard.access.routes import Route, canonical_segments, classify
from chromaguard.proxy.configpolicy import ConfigPolicy, checks

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


# ---- each rule's words and edges, in-process ---------------------------------------------------

_RUN = "asks clients to run a model repository's code; chromaguard never stores that (remove it, or set it to false)"
_ARRAY = "is an array where the engine expects an object (its fields by position); write it as a JSON object"


def _nest(levels: int, leaf: Any) -> Any:
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


def _refusal(body: Any, policy: ConfigPolicy | None = None) -> str | None:
    return (policy or ConfigPolicy()).refusal(None, body if isinstance(body, bytes) else json.dumps(body).encode())


@pytest.mark.parametrize("body, message", [
    ({"configuration": {"embedding_function": {"type": "known", "name": "x",
                                               "config": {"kwargs": {"trust_remote_code": True}}}}},
     f"configuration.embedding_function.config.kwargs.trust_remote_code {_RUN}"),
    ({"configuration": {"hnsw": [1, 2]}}, f"configuration.hnsw {_ARRAY}"),
    ({"configuration": {"embedding_function": "x"}}, "configuration.embedding_function must be a JSON object"),
    ({"config": {"embedding_function": "x"}}, "config.embedding_function must be a JSON object"),
    ({"configuration": {"a": json.dumps({"b": [1]})}}, f"configuration.a.b {_ARRAY}"),  # typed inside a string
    ({"metadata": {"configuration_json": json.dumps({"x": [1]})}}, f"metadata.configuration_json.x {_ARRAY}"),
    ({"metadata": {"x": " " + json.dumps({"trust_remote_code": True})}}, f"metadata.x.trust_remote_code {_RUN}"),
    ({"metadata": {"x": json.dumps([{"trust_remote_code": True}])}}, f"metadata.x[0].trust_remote_code {_RUN}"),
    ({"metadata": {"a": "{not json", "b": json.dumps({"trust_remote_code": 1})}},
     f"metadata.b.trust_remote_code {_RUN}"),
    (b'{"a": 1, "a": 2}', "the request body is ambiguous: the key 'a' appears twice in one object"),
    (b"[1]", "the request body must be a JSON object"),
    (b"\xff", "the request body is not valid JSON (UTF-8, numbers under 4,300 digits)"),
    ({"metadata": _nest(64, 1)}, "the request body is nested too deeply"),
    ({"metadata": _nest(62, json.dumps({"b": {"c": 1}}))}, "metadata" + ".a" * 62 + " is nested too deeply"),
])
def test_each_refusal_names_the_field_and_the_fix(body: Any, message: str) -> None:
    assert _refusal(body) == message


@pytest.mark.parametrize("body", [
    {"metadata": _nest(63, 1)},  # the deepest a body may be
    {"metadata": _nest(61, json.dumps({"b": {"c": 1}}))},  # and a JSON string inside counts its own levels
    {"configuration": {"embedding_function": {"type": "known", "name": "x", "config": {"list": [1, 2]}}}},
    {"metadata": {"a": "[not json"}}, b"   ", b"",
])
def test_what_passes(body: Any) -> None:
    assert _refusal(body) is None


def test_the_allow_list_names_every_allowed_function() -> None:
    policy = ConfigPolicy(("default", "openai"))
    assert _refusal({"configuration": {"embedding_function": {"type": "known", "name": "x"}}}, policy) == \
        "configuration.embedding_function.name 'x' is not an allowed embedding function " \
        "(CHROMAGUARD_ALLOWED_EMBEDDING_FUNCTIONS=default,openai)"
    assert _refusal({"configuration": {"embedding_function": {"type": "known", "name": "openai"}}}, policy) is None


def test_only_bodies_that_may_be_stored_are_checked() -> None:
    create = classify("POST", canonical_segments(b"/api/v2/tenants/t/databases/d/collections") or [])
    query = classify("POST", canonical_segments(b"/api/v2/tenants/t/databases/d/collections/"
                                                b"0b5e8f3c-6d1a-4c2e-9f7a-1d2c3b4a5e6f/query") or [])
    assert checks("POST", create) and checks("PUT", None) and checks("DELETE", None)
    assert not checks("GET", None) and not checks("HEAD", None) and not checks("POST", query)


def _lists(levels: int, leaf: Any) -> Any:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


@pytest.mark.parametrize("body, message", [
    ({"metadata": {"a": _lists(63, 1)}}, "the request body is nested too deeply"),  # lists count like objects
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "the request body is nested too deeply"),  # the parser's limit
    ({"configuration": {"a": json.dumps([{"b": [1]}])}}, f"configuration.a[0].b {_ARRAY}"),
    ({"metadata": {"x": [json.dumps({"trust_remote_code": True})]}}, f"metadata.x[0].trust_remote_code {_RUN}"),
])
def test_arrays_are_walked_like_objects(body: Any, message: str) -> None:
    assert _refusal(body) == message


def test_arrays_are_data_outside_typed_fields_and_anywhere_in_a_function_s_config() -> None:
    assert _refusal({"metadata": {"a": _lists(62, 1)}}) is None
    assert _refusal({"ids": ["a", "b"], "metadata": {"tags": [1, 2]}}) is None
    config = {"s": json.dumps({"l": [1]}), "l": [{"m": [1]}, [2]]}
    assert _refusal({"configuration": {"embedding_function": {"type": "known", "name": "x", "config": config}}}) is None


def test_the_allow_list_applies_to_an_embedding_function_anywhere() -> None:
    assert _refusal({"embedding_function": {"type": "known", "name": "x"}}, ConfigPolicy(("default", "openai"))) == \
        "embedding_function.name 'x' is not an allowed embedding function " \
        "(CHROMAGUARD_ALLOWED_EMBEDDING_FUNCTIONS=default,openai)"
