"""A real S3-compatible server on loopback (moto's standalone server), and a switch to cut it off.

The repository code reaches it through its production path (obstore over HTTP, credentials
from the standard AWS variables); nothing in the storage library is mocked.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from support.procs import free_port

REGION = "us-east-1"


class MotoServer:
    """``moto_server`` in a process of its own. With ``auth``, IAM is enforced after setup:
    ``keys["rw"]`` may do anything, ``keys["ro"]`` only read and list."""

    def __init__(self, log: Path, *, auth: bool = False) -> None:
        self.port = free_port()
        env = {"PATH": "/usr/bin:/bin", "HOME": str(log.parent)}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "7"  # the setup calls below, then every call is checked
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait()
        self.keys: dict[str, dict[str, str]] = {}
        if auth:
            self._users()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, endpoint: str | None = None, user: str | None = None, **extra: str) -> dict[str, str]:
        """What a user sets to reach this server (the standard AWS variables)."""
        key = self.keys.get(user or "", {"AccessKeyId": "testing", "SecretAccessKey": "testing"})
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                "AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_DEFAULT_REGION": REGION, **extra}

    def client(self) -> Any:
        key = self.keys.get("rw", {"AccessKeyId": "testing", "SecretAccessKey": "testing"})
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys_under(self, bucket: str, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        # The whole bucket, filtered here: moto's signature check rejects a listing with a prefix.
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                if item["Key"].startswith(prefix):
                    found[item["Key"]] = item["Size"]
        return found

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                time.sleep(0.05)
        raise RuntimeError("moto_server did not start in 30 s")

    def _users(self) -> None:
        setup = dict(endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="setup",
                     aws_secret_access_key="setup")
        boto3.client("s3", **setup).create_bucket(Bucket="guarded")
        iam = boto3.client("iam", **setup)
        for user, actions in (("rw", "s3:*"), ("ro", ["s3:GetObject", "s3:ListBucket"])):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            self.keys[user] = iam.create_access_key(UserName=user)["AccessKey"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


class Switch:
    """A TCP relay in front of a server that can be cut (the store "stops") and restored,
    and can slow every transfer down so a kill lands in the middle of an operation."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.target = port
        self.delay = delay
        self.port = free_port()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones: the store is gone."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
