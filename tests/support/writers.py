"""Writers that add and delete while a backup is taken, and the check that a restored backup
holds exactly the state at its write hold."""

from __future__ import annotations

import random
import threading
import time

import httpx
import numpy as np

from support.procs import Workers

BASE = "/api/v2/tenants/default_tenant/databases/default_database"
DIM = 8


def vector(key: str) -> list[float]:
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    return rng.random(DIM, dtype=np.float32).tolist()


class Writers(Workers):
    """Threads that add and delete continuously, logging when each request was sent and answered."""

    def __init__(self, url: str, cid: str, n: int = 3) -> None:
        super().__init__()
        self.url, self.cid = url, cid
        self.log: list[tuple[str, list[str], float, float, int]] = []  # op, ids, sent, answered, status
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in range(n)]

    def _run(self, worker: int) -> None:
        rnd = random.Random(worker)
        mine: list[str] = []
        with httpx.Client(base_url=self.url, timeout=60) as http:
            n = 0
            while not self.stop.is_set():
                if mine and rnd.random() < 0.3:
                    ids = rnd.sample(mine, min(3, len(mine)))
                    op, body = "delete", {"ids": ids}
                else:
                    ids = [f"w{worker}-{n}-{i}" for i in range(10)]
                    n += 1
                    op, body = "add", {"ids": ids, "embeddings": [vector(i) for i in ids]}
                sent = time.time()
                r = http.post(f"{BASE}/collections/{self.cid}/{op}", json=body)
                answered = time.time()
                with self.lock:
                    self.log.append((op, ids, sent, answered, r.status_code))
                if r.status_code in (200, 201):
                    if op == "add":
                        mine.extend(ids)
                    else:
                        mine = [i for i in mine if i not in ids]



def all_ids(url: str, cid: str) -> set[str]:
    return set(httpx.post(f"{url}{BASE}/collections/{cid}/get", json={"include": []}, timeout=60).json()["ids"])


def check_state_at_hold(present: set[str], log: list[tuple[str, list[str], float, float, int]],
                        hold: dict[str, float]) -> None:
    """Everything acknowledged before the hold is present, nothing sent after it is, none half."""
    definitely: set[str] = set()
    ambiguous_deletes: set[str] = set()
    adds_before: set[str] = set()
    for op, ids, sent, answered, status in sorted(log, key=lambda e: e[3]):
        if status not in (200, 201):
            continue
        batch = {i in present for i in ids}
        if answered < hold["from"]:  # acknowledged before the hold: its effect must be in the backup
            if op == "add":
                definitely |= set(ids)
                adds_before |= set(ids)
            else:
                definitely -= set(ids)
        elif sent < hold["until"]:  # in flight when the hold began: in or out, but whole
            if op == "add":
                assert len(batch) == 1, f"an add is half-present: {ids}"
            else:
                ambiguous_deletes |= set(ids)
        elif op == "add":
            assert batch == {False}, f"a write sent after the hold is in the backup: {ids}"
    must = definitely - ambiguous_deletes
    assert must <= present, f"{len(must - present)} acknowledged writes missing"
    assert len(adds_before) > 50, "the writers did not write enough to prove anything"
    possible = {i for op, ids, sent, _, status in log if op == "add" and sent < hold["until"] for i in ids}
    assert present <= possible, "the backup holds records nobody wrote before the hold ended"
