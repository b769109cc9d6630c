"""HTTP/1.1 field and framing rules, in one place for the server, the engine client and the proxy."""

from __future__ import annotations

import re

Headers = list[tuple[bytes, bytes]]

# A request's fields that describe one hop, not the request: never sent on to the engine.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect", b"host", b"content-length",
})
# An answer's fields not relayed to the client: its framing is ours to write.
NOT_RELAYED = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"content-length",
})
NO_BODY_STATUS = frozenset({204, 304})
_LENGTH_ALWAYS = frozenset({"POST", "PUT", "PATCH"})


def request_length(method: str, size: int) -> int | None:
    """The Content-Length a request of ``size`` body bytes carries: none for an empty GET, a 0
    for an empty POST (servers may refuse one without it: 411)."""
    return size if size else (0 if method in _LENGTH_ALWAYS else None)


def _names(names: frozenset[bytes]) -> bytes:
    return b"|".join(re.escape(name) for name in sorted(names))


# Header lines, each after a CRLF, and the CRLF that ends the head: names are tokens, values
# hold no control character but tab (no CR or LF alone, no NUL, no folded lines). Linear.
_FIELDS = rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[^\x00-\x08\x0a-\x1f\x7f]*+)*+\r\n\r\n"
_ANSWER_HEAD = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t !-~\x80-\xff]*+" + _FIELDS)
_HOP_FIELD = re.compile(rb"\n(?:" + _names(NOT_RELAYED - {b"content-length"}) + rb"):")
_LENGTH_FIELD = b"\ncontent-length:"


def whole_answer(data: bytes) -> tuple[int, int] | None:
    """(status, where the body starts) when ``data`` is one whole answer that can go to the
    client as it is: strictly formed, framed by one Content-Length, no field of ``NOT_RELAYED``
    but that one, a status that has a body. Anything else is for the parser (None)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or _ANSWER_HEAD.fullmatch(data, 0, end + 4) is None:
        return None
    status = int(data[9:12])
    if status in NO_BODY_STATUS:
        return None
    low = data[data.find(b"\r\n"):end + 2].lower()
    at = low.find(_LENGTH_FIELD)
    if at < 0 or low.find(_LENGTH_FIELD, at + 1) >= 0 or _HOP_FIELD.search(low) is not None:
        return None
    value = low[at + len(_LENGTH_FIELD):low.find(b"\r", at)].strip(b" \t")
    if not value.isdigit() or len(value) > 15 or len(data) - end - 4 != int(value):
        return None
    return status, end + 4


def parse_fields(block: bytes) -> Headers:
    """Header lines (each ending in CRLF, checked already) as the parser gives them: names in
    lower case, values without the blanks around them."""
    fields = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip(b" \t")))
    return fields
