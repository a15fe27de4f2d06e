"""One remote request from admission to its final event: which upstreams it tries, and when.

A request goes to the upstream the pool picks. If that upstream fails (connect error, 5xx,
timeout, malformed stream) *before any text reached the consumer*, it is taken out and the
request fails over to another healthy upstream, up to ``max_attempts``; once text was delivered,
or when no upstream is left, the request ends with ``Finished(ERROR)``. An upstream that refuses
the request itself (4xx) is not taken out and the request fails. Token ids are sent first; an
upstream that refuses ids (400/422) gets the decoded text instead, and is remembered for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ...types import FinishReason
from ..core.rows import OutputRow
from .upstreams import Upstream, UpstreamPool
from .wire import CHAT_COMPLETIONS, COMPLETIONS, Outcome, Refused, UpstreamDown, describe, sampling_body, stream_reply

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False, kw_only=True)
class RemoteRow(OutputRow):
    """One remote request: the shared output pipeline (text in, from an upstream), plus what the
    upstream is sent besides the prompt ids."""

    stop_token_ids: tuple[int, ...] = ()
    session_key: str | None = None
    messages: tuple[dict[str, str], ...] | None = None


FinishFn = Callable[..., None]  # finish(row, reason, *, error=None, prompt_tokens=None, completion_tokens=None)


class Failover:
    """Serves requests across a pool's upstreams (see the module docstring); one per engine."""

    def __init__(self, pool: UpstreamPool, client: httpx.AsyncClient, *, tokenizer: Any, timeout_s: float,
                 max_attempts: int, finish: FinishFn) -> None:
        self.pool = pool
        self.client = client
        self.tokenizer = tokenizer
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._finish = finish

    async def serve(self, row: RemoteRow) -> None:
        """Try upstreams until one streams the reply; fail over only before text was delivered."""
        tried: set[str] = set()
        try:
            while True:
                up = self.pool.pick(row.session_key, tried)
                if up is None:
                    self._finish(row, FinishReason.ERROR,
                                 error="no upstream is healthy: " + (self.pool.down_summary() or "all failed"))
                    return
                tried.add(up.url)
                up.in_flight += 1
                try:
                    outcome = await self._attempt(row, up)
                except UpstreamDown as exc:
                    self.pool.mark_down(up, str(exc))
                    if row.delivered or len(tried) >= self.max_attempts:
                        self._finish(row, FinishReason.ERROR, error=f"upstream {up.url} failed: {exc}")
                        return
                    log.info("request %s fails over from %s: %s", row.id, up.url, exc)
                    continue
                except Refused as exc:
                    self._finish(row, FinishReason.ERROR, error=f"upstream {up.url} refused the request: {exc}")
                    return
                finally:
                    up.in_flight -= 1
                up.streak = 0
                self._finish(row, outcome.reason, prompt_tokens=outcome.prompt_tokens,
                             completion_tokens=outcome.completion_tokens)
                return
        except asyncio.CancelledError:
            self._finish(row, FinishReason.CANCELLED)
            raise
        except Exception as exc:  # a bug here must still end the request
            log.exception("remote request %s failed", row.id)
            self._finish(row, FinishReason.ERROR, error=f"the remote engine failed ({type(exc).__name__})")

    async def _attempt(self, row: RemoteRow, up: Upstream) -> Outcome:
        """One upstream, token ids first; an upstream that refuses ids gets the decoded text."""
        await self._guard(self.pool.ensure_info(self.client, up))
        use_ids = bool(row.prompt_ids) and up.token_ids_ok is not False
        try:
            return await self._guard(self._post(row, up, use_ids=use_ids))
        except Refused as exc:
            if not (use_ids and exc.status in (400, 422) and self.tokenizer is not None and not row.delivered):
                raise
        outcome = await self._guard(self._post(row, up, use_ids=False))
        up.token_ids_ok = False  # text worked where ids were refused
        return outcome

    async def _post(self, row: RemoteRow, up: Upstream, *, use_ids: bool) -> Outcome:
        path, body = self._payload(row, up, use_ids=use_ids)
        return await stream_reply(self.client, up.url, path, body, self.pool.headers(), row)

    def _payload(self, row: RemoteRow, up: Upstream, *, use_ids: bool) -> tuple[str, dict[str, Any]]:
        """The path and JSON body for one attempt."""
        body = sampling_body(row.params, stops=row.stops.strings, stop_token_ids=row.stop_token_ids,
                             model=self.pool.model_name(up))
        if row.messages is not None and not row.prompt_ids:
            body["messages"] = list(row.messages)
            return CHAT_COMPLETIONS, body
        if use_ids:
            body["prompt"] = row.prompt_ids
        elif self.tokenizer is not None:
            body["prompt"] = self.tokenizer.decode(row.prompt_ids)
        else:
            raise Refused(400, "the upstream refuses token ids and there is no local tokenizer to "
                               "decode them: pass tokenizer= to remote_model")
        return COMPLETIONS, body

    async def _guard(self, coro: Awaitable[T]) -> T:
        """Transport failures and timeouts of one upstream call become :class:`UpstreamDown`."""
        try:
            return await coro
        except httpx.TimeoutException as exc:
            raise UpstreamDown(f"timed out ({type(exc).__name__}, limit {self.timeout_s:g} s)") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise UpstreamDown(describe(exc)) from exc


__all__ = ["Failover", "RemoteRow"]
