"""One remote request from admission to its final event: which upstreams it tries, and when.

A request goes to the upstream the pool picks. If that upstream fails (connect error, 5xx,
timeout, malformed stream), it is taken out and the request fails over to another healthy
upstream, up to ``max_attempts``; only when no upstream is left does it end with
``Finished(ERROR)``. An upstream that refuses the request itself (4xx) is not taken out and the
request fails.

**A reply cut mid-generation continues.** This front-end rendered the prompt, so it knows its ids,
and it asks every upstream for the ids it generates (``wire.ASK_FOR_IDS``). The next upstream is
sent ``/v1/completions`` with prompt ids + the ids generated so far and ``max_tokens`` less what
was generated; its text goes on through the same row (the same stop-string filter, so a stop
string that spans the two attempts still ends the reply), and the client sees one uninterrupted
reply: greedy, the same reply as an undisturbed run. An upstream that does not report ids gets the
text generated so far re-encoded by our tokenizer (the same text, possibly other tokens). Requests
whose messages the upstream renders itself (no local tokenizer) can only start over, so they fail
over only before any text was delivered.

Token ids are sent first; an upstream that refuses ids (400/422) gets the decoded text instead,
and one that refuses the fields asking for the generated ids is asked without them; each is
remembered for its upstream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ...structured.upstreams import upstream_fields
from ...types import FinishReason
from ..core.rows import OutputRow
from .upstreams import Upstream, UpstreamPool
from .wire import (
    ASK_FOR_IDS,
    CHAT_COMPLETIONS,
    COMPLETIONS,
    Outcome,
    Refused,
    UpstreamDown,
    describe,
    names_id_fields,
    sampling_body,
    stream_reply,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False, kw_only=True)
class RemoteRow(OutputRow):
    """One remote request: the shared output pipeline (text in, from an upstream), plus what the
    upstream is sent besides the prompt ids."""

    stop_token_ids: tuple[int, ...] = ()
    session_key: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    received: str = ""  # the upstreams' text so far (before the filter), over every attempt
    ids_known: bool = True  # every piece of text came with the ids it decodes from
    resumed_at: int = 0  # generated tokens the current attempt's prompt already holds

    @property
    def continues(self) -> bool:
        """Something was generated: a next attempt goes on from it instead of starting over."""
        return bool(self.received or self.generated)

    @property
    def generated_count(self) -> int:
        return len(self.generated) if self.ids_known else self.produced

    def take_text(self, piece: str, ids: Sequence[int] | None = None) -> bool:
        if piece:
            self.received += piece
            self.ids_known = self.ids_known and ids is not None
        return super().take_text(piece, ids)

    def start_over(self) -> None:
        """Forget an attempt that delivered nothing (the next one starts from the prompt)."""
        self.restart_text()
        self.received, self.ids_known, self.resumed_at = "", True, 0


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
        """Try upstreams until one streams the whole reply (see the module docstring)."""
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
                    if (row.delivered and not self._can_continue(row)) or len(tried) >= self.max_attempts:
                        self._finish(row, FinishReason.ERROR, error=f"upstream {up.url} failed: {exc}")
                        return
                    log.info("request %s fails over from %s%s: %s", row.id, up.url,
                             f" after {row.generated_count} tokens" if self._can_continue(row) else "", exc)
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

    def _can_continue(self, row: RemoteRow) -> bool:
        """The reply can go on elsewhere from its prompt ids + what was generated (the token-ids
        path; the ids as the upstream reported them, else re-encoded by our tokenizer)."""
        return bool(row.prompt_ids) and (row.ids_known or self.tokenizer is not None)

    def _continuation(self, row: RemoteRow) -> list[int]:
        """The prompt of the next attempt: prompt ids + the ids generated so far."""
        if not row.continues:
            return row.prompt_ids
        generated = row.generated if row.ids_known else self.tokenizer.encode(row.received, add_special_tokens=False)
        return [*row.prompt_ids, *generated]

    async def _attempt(self, row: RemoteRow, up: Upstream) -> Outcome:
        """One upstream, token ids first; an upstream that refuses ids gets the decoded text, one
        that refuses the fields asking for the generated ids is asked without them."""
        await self._guard(self.pool.ensure_info(self.client, up))
        if row.continues and not self._can_continue(row):
            row.start_over()  # nothing was delivered (else the fail-over ended the request)
        use_ids = bool(row.prompt_ids) and up.token_ids_ok is not False
        ask_ids = bool(row.prompt_ids) and up.reports_ids is not False
        while True:
            try:
                outcome = await self._guard(self._post(row, up, use_ids=use_ids, ask_ids=ask_ids))
            except Refused as exc:  # (a refusal comes before any text of this attempt)
                if exc.status not in (400, 422):
                    raise
                if ask_ids and (names_id_fields(str(exc)) or not use_ids):
                    ask_ids = False
                elif use_ids and self.tokenizer is not None:
                    use_ids = False
                else:
                    raise
                continue
            if row.prompt_ids:
                up.reports_ids = up.reports_ids or ask_ids
                if not use_ids:
                    up.token_ids_ok = False  # text worked where ids were refused
            if not row.resumed_at:
                return outcome
            # the last upstream's usage covers its attempt only: count the whole reply here
            return dataclasses.replace(outcome, prompt_tokens=len(row.prompt_ids),
                                       completion_tokens=row.generated_count)

    async def _post(self, row: RemoteRow, up: Upstream, *, use_ids: bool, ask_ids: bool) -> Outcome:
        path, body = self._payload(row, up, use_ids=use_ids, ask_ids=ask_ids)
        return await stream_reply(self.client, up.url, path, body, self.pool.headers(), row)

    def _payload(self, row: RemoteRow, up: Upstream, *, use_ids: bool, ask_ids: bool) -> tuple[str, dict[str, Any]]:
        """The path and JSON body for one attempt (a continuation's prompt holds what was
        generated, and its ``max_tokens`` is what is left)."""
        body = sampling_body(row.params, stops=row.stops.strings, stop_token_ids=row.stop_token_ids,
                             model=self.pool.model_name(up))
        chat = row.messages is not None and not row.prompt_ids
        if row.params.constraint is not None:  # in each upstream's own fields (structured.upstreams)
            body.update(upstream_fields(row.params.constraint))
        if chat:
            assert row.messages is not None
            body["messages"] = list(row.messages)
            return CHAT_COMPLETIONS, body
        prompt = self._continuation(row)
        row.resumed_at = len(prompt) - len(row.prompt_ids)
        body["max_tokens"] = max(1, row.params.max_new_tokens - row.generated_count)
        if ask_ids:
            body.update(ASK_FOR_IDS)
        if use_ids:
            body["prompt"] = prompt
        elif self.tokenizer is not None:
            body["prompt"] = self.tokenizer.decode(prompt)
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
