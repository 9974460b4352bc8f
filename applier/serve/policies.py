"""Load-balancing policies: which ready replica gets the next request.

Thread-safe: the ready set is replaced from the daemon's thread while the balancer's event loop
selects, so every method takes the policy's lock.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Sequence
from typing import Literal

PolicyName = Literal["round_robin", "least_load", "instance_aware_least_load"]
DEFAULT_POLICY: PolicyName = "least_load"


class Policy:
    """Shared bookkeeping: the ready list and each replica's in-flight request count."""

    name: str = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: list[str] = []
        self._load: dict[str, int] = {}

    @property
    def ready(self) -> list[str]:
        with self._lock:
            return list(self._ready)

    def set_ready(self, urls: Sequence[str]) -> None:
        unique = list(dict.fromkeys(urls))
        with self._lock:
            self._replace(unique)

    def _replace(self, urls: list[str]) -> None:
        self._ready = urls

    def select(self, exclude: Collection[str] = ()) -> str | None:
        """A ready replica not in `exclude` if there is one, else any ready one, else None."""
        with self._lock:
            if not self._ready:
                return None
            fresh = [u for u in self._ready if u not in exclude]
            return self._pick(fresh or self._ready)

    def _pick(self, candidates: list[str]) -> str:
        raise NotImplementedError

    def started(self, url: str) -> None:
        with self._lock:
            self._load[url] = self._load.get(url, 0) + 1

    def finished(self, url: str) -> None:
        with self._lock:
            left = self._load.get(url, 0) - 1
            if left > 0:
                self._load[url] = left
            else:
                self._load.pop(url, None)

    def load(self, url: str) -> int:
        with self._lock:
            return self._load.get(url, 0)


class RoundRobin(Policy):
    """Cycles through the ready list, shuffled whenever the set changes (as SkyServe does), so
    several balancers given the same list do not all hit the same replica first."""

    name = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng or random.Random()
        self._cursor = 0

    def _replace(self, urls: list[str]) -> None:
        if set(urls) == set(self._ready):
            return
        self._rng.shuffle(urls)
        self._ready = urls
        self._cursor = 0

    def _pick(self, candidates: list[str]) -> str:
        n = len(self._ready)
        for step in range(n):
            url = self._ready[(self._cursor + step) % n]
            if url in candidates:
                self._cursor = (self._cursor + step + 1) % n
                return url
        return candidates[0]


class LeastLoad(Policy):
    """The replica with the fewest requests in flight; ties rotate, so idle replicas share."""

    name = "least_load"

    def __init__(self) -> None:
        super().__init__()
        self._cursor = 0

    def _pick(self, candidates: list[str]) -> str:
        low = min(self._load.get(u, 0) for u in candidates)
        allowed = set(candidates)
        n = len(self._ready)
        # The cursor is a position in the ready list, so ties go to the next replica after
        # the last one chosen, whatever happened in between.
        for step in range(n):
            i = (self._cursor + step) % n
            url = self._ready[i]
            if url in allowed and self._load.get(url, 0) == low:
                self._cursor = i + 1
                return url
        return candidates[0]


def make_policy(name: str | None, rng: random.Random | None = None) -> Policy:
    """The policy for a service's `load_balancing_policy` (None: SkyServe's default)."""
    chosen = name or DEFAULT_POLICY
    if chosen == "round_robin":
        return RoundRobin(rng)
    if chosen in ("least_load", "instance_aware_least_load"):
        # instance_aware_least_load weights load by each replica's accelerator target QPS;
        # replicas here carry no accelerator type yet, so it is plain least_load.
        return LeastLoad()
    raise ValueError(
        f"unknown load_balancing_policy {chosen!r}; use round_robin, least_load or "
        "instance_aware_least_load"
    )
