"""The remote engine's upstreams: which one takes a request, and which are out.

Least-loaded dispatch (fewest in flight; ties go to the least recently picked) with session
affinity (a session's turns go to the upstream its last turn used while that one is healthy, so
its prefix cache is reused). An upstream that fails is taken out for ``retry_after_s``, doubling on
each further failure (16x at most), and is health-checked (``GET /health``, else ``GET
/v1/models``) before it takes requests again. Everything here runs on the engine's loop.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..core.protocol import UpstreamHealth
from .wire import describe

log = logging.getLogger(__name__)

MAX_BACKOFF = 16  # an upstream is out for at most retry_after_s * this
AFFINITY_SIZE = 10_000  # sessions remembered for affinity (least recently used dropped)


@dataclass(eq=False)
class Upstream:
    """One upstream's dispatch state; mutated only on the engine's loop (read anywhere)."""

    url: str
    in_flight: int = 0
    failures: int = 0  # total, for /health
    streak: int = 0  # consecutive failures, for the back-off
    down_until: float | None = None  # monotonic time; None = healthy
    last_error: str | None = None
    token_ids_ok: bool | None = None
    reports_ids: bool | None = None  # False: it refused the fields asking for the generated ids
    model_name: str | None = None
    info_fetched: bool = False
    probing: bool = False
    picked: int = 0  # when it was last picked (ties go to the least recently picked)

    @property
    def healthy(self) -> bool:
        return self.down_until is None

    def health(self, now: float) -> UpstreamHealth:
        retry = 0.0 if self.down_until is None else max(0.0, self.down_until - now)
        return UpstreamHealth(self.url, self.healthy, self.in_flight, self.failures, retry,
                              self.last_error)


class UpstreamPool:
    """The upstreams of one remote model (see the module docstring).

    Args:
        spec: the model's :class:`~chatstream_lab.models.remote.RemoteSpec` (urls, model name,
            key, whether they take token ids, the context window).
        context_window: the window until an upstream reports its ``max_model_len``.
        retry_after_s / connect_timeout_s: the back-off unit and the health check's timeout.
        on_down: called after an upstream is taken out (the engine fails its queue if none is left).
        on_up: called when an upstream is back (the engine dispatches what waits).
    """

    def __init__(self, spec: Any, *, context_window: int, retry_after_s: float, connect_timeout_s: float,
                 on_down: Callable[[], None], on_up: Callable[[], None]) -> None:
        self.spec = spec
        self.upstreams = [Upstream(u, token_ids_ok=getattr(spec, "token_ids_ok", None)) for u in spec.urls]
        self.window = int(getattr(spec, "context_window", None) or context_window)
        self.retry_after_s = retry_after_s
        self.connect_timeout_s = connect_timeout_s
        self._on_down = on_down
        self._on_up = on_up
        self._affinity: OrderedDict[str, Upstream] = OrderedDict()
        self._picks = itertools.count(1)

    # -- reading (any thread) ---------------------------------------------------------------
    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(u.url for u in self.upstreams)

    def any_healthy(self) -> bool:
        return any(u.healthy for u in self.upstreams)

    def health(self) -> tuple[UpstreamHealth, ...]:
        now = time.monotonic()
        return tuple(u.health(now) for u in self.upstreams)

    def down_summary(self) -> str:
        now = time.monotonic()
        return "; ".join(f"{u.url} ({u.last_error or 'down'}, retry in {u.health(now).retry_in_s:.1f} s)"
                         for u in self.upstreams if not u.healthy)

    def headers(self) -> dict[str, str]:
        key = getattr(self.spec, "api_key", None)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def model_name(self, up: Upstream) -> str | None:
        return getattr(self.spec, "model", None) or up.model_name

    # -- choosing ---------------------------------------------------------------------------
    def pick(self, session_key: str | None, tried: set[str]) -> Upstream | None:
        """The session's upstream while it is healthy, else the least loaded healthy one."""
        healthy = [u for u in self.upstreams if u.healthy and u.url not in tried]
        if not healthy:
            return None
        up = self._affinity.get(session_key) if session_key is not None else None
        if up is None or up not in healthy:
            up = min(healthy, key=lambda u: (u.in_flight, u.picked))
        up.picked = next(self._picks)
        if session_key is not None:
            self._affinity[session_key] = up
            self._affinity.move_to_end(session_key)
            while len(self._affinity) > AFFINITY_SIZE:
                self._affinity.popitem(last=False)
        return up

    # -- health -----------------------------------------------------------------------------
    def mark_down(self, up: Upstream, error: str) -> None:
        up.failures += 1
        up.streak += 1
        delay = self.retry_after_s * min(2 ** (up.streak - 1), MAX_BACKOFF)
        up.down_until = time.monotonic() + delay
        up.last_error = error
        log.warning("upstream %s is out for %.1f s: %s", up.url, delay, error)
        self._on_down()

    def mark_up(self, up: Upstream) -> None:
        up.down_until = None
        up.streak = 0

    def due_for_probe(self, now: float) -> list[Upstream]:
        """Upstreams whose back-off ended and that are not being checked yet (now marked probing)."""
        due = [u for u in self.upstreams if u.down_until is not None and u.down_until <= now and not u.probing]
        for up in due:
            up.probing = True
        return due

    async def probe(self, client: httpx.AsyncClient, up: Upstream) -> None:
        """Put ``up`` back once its health check answers 200; else keep it out, longer."""
        try:
            status = await self._get_status(client, up, "/health")
            if status == 404:
                status = await self._get_status(client, up, "/v1/models")
            if status == 200:
                log.info("upstream %s is healthy again", up.url)
                self.mark_up(up)
                self._on_up()
            else:
                self.mark_down(up, f"health check: HTTP {status}")
        except (httpx.HTTPError, OSError) as exc:
            self.mark_down(up, f"health check: {describe(exc)}")
        finally:
            up.probing = False

    async def _get_status(self, client: httpx.AsyncClient, up: Upstream, path: str) -> int:
        resp = await client.get(up.url + path, headers=self.headers(), timeout=self.connect_timeout_s)
        return resp.status_code

    async def ensure_info(self, client: httpx.AsyncClient, up: Upstream) -> None:
        """Ask ``/v1/models`` once per upstream for the model name (and ``max_model_len``) when
        the spec leaves them open; only a transport failure counts against the upstream."""
        if up.info_fetched or (getattr(self.spec, "model", None) and getattr(self.spec, "context_window", None)):
            return
        try:
            resp = await client.get(up.url + "/v1/models", headers=self.headers())
            entry = resp.json()["data"][0] if resp.status_code == 200 else {}
        except (KeyError, IndexError, TypeError, ValueError):
            entry = {}
        up.info_fetched = True
        if isinstance(entry, dict):
            if isinstance(entry.get("id"), str):
                up.model_name = entry["id"]
            max_len = entry.get("max_model_len")
            if isinstance(max_len, int) and max_len > 1 and not getattr(self.spec, "context_window", None):
                self.window = max_len


__all__ = ["Upstream", "UpstreamPool"]
