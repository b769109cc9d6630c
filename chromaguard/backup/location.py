"""What a backup repository URL may say: a folder, ``s3://``, ``gs://`` or ``az://`` with a bucket.

Apart from the store so a setting can be checked when it is read, without loading the
object-store client.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

SCHEMES = ("s3", "gs", "az")


def check_url(url: str) -> SplitResult | None:
    """The URL's parts for an object store, None for a folder; ValueError says what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        return None
    if scheme not in SCHEMES:
        raise ValueError(f"unknown repository scheme {scheme!r}; use a folder path, s3://bucket/prefix, "
                         "gs://bucket/prefix or az://container/prefix")
    if parts.username or parts.password or "@" in url:  # a secret with a "/" in it hides from urlsplit
        raise ValueError("credentials do not belong in the URL (it is logged); use the standard environment "
                         "variables or profile")
    if not parts.hostname:
        raise ValueError(f"the URL names no bucket; for example {scheme}://my-bucket/chroma")
    return parts
