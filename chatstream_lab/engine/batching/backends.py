"""Model backends: the only code that runs a forward pass.

A backend keeps the batch of joined rows (one per running request) and answers two questions:
"here is a prompt, give me the logits after it" (:meth:`prefill`, in chunks, so a long prompt
does not stall the running streams) and "here is the last token of every row, give me the next
logits" (:meth:`decode`, ONE forward for the whole batch).

:class:`HFBackend` keeps one batched KV cache with *left padding*: each row has its own real
length, position ids and attention-mask columns. A finished prompt is prefilled alone (batch 1,
no padding), then joined by left-padding either side to the same length; a leaving row is
dropped with ``index_select`` and all-padding columns are trimmed from the left. A row of a
session keeps its KV when it leaves (:class:`~.session_cache.SessionKVCache`): the session's next
prompt starts from it and prefills only the new suffix.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...stats import KVCacheStats
from ..core.protocol import Key, StepBackend
from .kvcache import KV, can_load, get_kv, load_kv, new_cache, pad_left, set_kv
from .onednn import PackedHead, PackedLinears
from .prefix_cache import PrefixCache, PrefixHit
from .session_cache import SessionKVCache


@dataclass
class Prefill:
    """A prompt on its way into the batch."""

    ids: list[int]
    done: int = 0
    cache: Any = None
    mask: torch.Tensor | None = None  # [P, T] for a padded group; None: one unpadded row
    store_at: int = 0  # keep the KV of the first ``store_at`` tokens as a shared prefix (0: no)

    @property
    def remaining(self) -> int:
        return len(self.ids) - self.done


class HFBackend:
    """Batched decode over a HuggingFace causal LM with a left-padded shared KV cache.

    Args:
        model: a transformers causal LM.
        prefix_cache_bytes: memory for shared prompt starts (:class:`PrefixCache`); 0 disables it.
        session_kv_bytes: memory for KV kept across a session's turns plus the live batch's KV
            (:class:`~.session_cache.SessionKVCache`); 0 disables it.
        onednn: use the oneDNN head and linears on CPU float32 (:mod:`.onednn`); False: plain torch.
    """

    def __init__(self, model: Any, prefix_cache_bytes: int = 64 << 20, *, session_kv_bytes: int = 0,
                 onednn: bool = True) -> None:
        self._model = model
        self._device = next(model.parameters()).device
        self.prefixes: PrefixCache | None = None
        self.sessions: SessionKVCache | None = None
        loadable = can_load(new_cache(model))
        if prefix_cache_bytes > 0 and loadable:
            self.prefixes = PrefixCache(model, prefix_cache_bytes)
        if session_kv_bytes > 0 and loadable:
            self.sessions = SessionKVCache(model, session_kv_bytes)
        self._token_bytes = 0  # KV bytes of one position of one row (known after the first forward)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._head = PackedHead.for_model(model) if onednn else None
        self._linears = PackedLinears.for_model(model) if onednn else None
        if self._head is not None:
            base = inspect.signature(model.model.forward).parameters
            self._base_cache_kw = "cache" if "cache" in base else "past_key_values"
        self.reset()

    def reset(self) -> None:
        self.rows: list[Key] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self._next_pos: torch.Tensor | None = None  # [B] position id of the next token
        self._padded = False
        self._keeping: list[tuple[str, list[int], KV]] = []  # rows' KV to keep once they have left
        if self.sessions is not None:
            self.sessions.make_room(0)

    def _forward(self, ids: torch.Tensor, cache: Any, mask: torch.Tensor | None = None,
                 pos: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] of the last position of every row, the cache extended in place."""
        with torch.inference_mode(), self._linears_for(ids):
            if self._head is not None:
                out = self._model.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                        use_cache=True, **{self._base_cache_kw: cache})
                return self._head(out.last_hidden_state[:, -1, :])
            kw: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
            if self._keep_kw:
                kw[self._keep_kw] = 1
            out = self._model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _linears_for(self, ids: torch.Tensor) -> Any:
        """Packed linears for a decode step of several rows; plain ones otherwise."""
        if self._linears is not None and ids.shape[1] == 1 and ids.shape[0] >= 2:
            return self._linears
        return contextlib.nullcontext()

    def start(self, prompt_ids: Sequence[int], session: str | None = None) -> Prefill:
        pf = Prefill(list(prompt_ids), cache=new_cache(self._model))
        if self.sessions is not None and session is not None:
            kept = self.sessions.take(session, pf.ids)
            if kept is not None:  # the session's earlier turns are in: run only the new suffix
                load_kv(pf.cache, kept.kv)
                pf.done = kept.length
                return pf
        if self.prefixes is None:
            return pf
        hit = self.prefixes.lookup([pf.ids])
        if hit is not None:  # the shared start is already computed: run only the rest
            load_kv(pf.cache, hit.kv)
            pf.done = hit.length
        else:  # stop the first chunk where this prompt stops sharing, and keep that KV
            pf.store_at = self.prefixes.shareable([pf.ids])
        self.prefixes.remember([pf.ids])
        return pf

    def prefill(self, pf: Prefill, budget: int) -> torch.Tensor | None:
        """Run up to ``budget`` prompt tokens; returns the last logits [V] once the prompt is in."""
        n = min(budget, pf.remaining)
        if pf.done < pf.store_at:
            n = min(n, pf.store_at - pf.done)
        chunk = torch.tensor([pf.ids[pf.done:pf.done + n]], dtype=torch.long, device=self._device)
        logits = self._forward(chunk, pf.cache)
        pf.done += n
        self._count_prefilled(n)
        if pf.done == pf.store_at and self.prefixes is not None:
            self.prefixes.store(pf.ids[:pf.done], get_kv(pf.cache))
        return logits[0] if pf.remaining == 0 else None

    def prefill_group(self, prompts: Sequence[Sequence[int]]) -> tuple[Prefill, torch.Tensor]:
        """Prefill several prompts in ONE padded forward; returns the group and logits [P, V].

        Rows are ``[shared prefix | padding | rest of the prompt]``: the prefix (see
        :class:`PrefixCache`; empty without one) is computed once, and only the rests are run.
        """
        prefix = self._shared_prefix(prompts)
        n = prefix.length if prefix is not None else 0
        length = max(len(p) for p in prompts) - n
        ids = torch.zeros(len(prompts), length, dtype=torch.long, device=self._device)
        mask = torch.zeros(len(prompts), n + length, dtype=torch.long, device=self._device)
        mask[:, :n] = 1
        for i, p in enumerate(prompts):
            rest = list(p[n:])
            ids[i, length - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[i, n + length - len(rest):] = 1
        pf = Prefill([], cache=new_cache(self._model), mask=mask)
        if prefix is not None:
            load_kv(pf.cache, [(k.expand(len(prompts), -1, -1, -1), v.expand(len(prompts), -1, -1, -1))
                               for k, v in prefix.kv])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, n:]
        logits = self._forward(ids, pf.cache, mask, pos)
        self._count_prefilled(sum(len(p) - n for p in prompts))
        # padded positions hold no information: zero them so nothing odd can leak through them
        keep = mask[:, None, :, None].to(get_kv(pf.cache)[0][0].dtype)
        set_kv(pf.cache, [(k * keep, v * keep) for k, v in get_kv(pf.cache)])
        return pf, logits

    def _shared_prefix(self, prompts: Sequence[Sequence[int]]) -> PrefixHit | None:
        """A stored prefix of every prompt, or a new one computed now if they share enough."""
        if self.prefixes is None:
            return None
        hit = self.prefixes.lookup(prompts)
        if hit is None and (n := self.prefixes.shareable(prompts)):
            cache = new_cache(self._model)
            self._forward(torch.tensor([list(prompts[0][:n])], dtype=torch.long, device=self._device), cache)
            self._count_prefilled(n)
            self.prefixes.store(prompts[0][:n], get_kv(cache))
            hit = self.prefixes.lookup(prompts)
        self.prefixes.remember(prompts)
        return hit

    def join(self, keys: Key | list[Key], pf: Prefill, keep: Sequence[int] | None = None) -> None:
        """Add the rows of ``pf`` (one prompt, or the ``keep`` rows of a group) to the batch."""
        keys = keys if isinstance(keys, list) else [keys]
        kv = get_kv(pf.cache)
        mask = pf.mask if pf.mask is not None else torch.ones(1, kv[0][0].shape[2], dtype=torch.long,
                                                                 device=self._device)
        if keep is not None and len(keep) < mask.shape[0]:
            idx = torch.tensor(list(keep), dtype=torch.long, device=self._device)
            mask = mask.index_select(0, idx)
            first = int(mask.any(dim=0).nonzero()[0])
            mask = mask[:, first:]
            kv = [(k.index_select(0, idx)[:, :, first:], v.index_select(0, idx)[:, :, first:]) for k, v in kv]
            set_kv(pf.cache, kv)
        pos = mask.sum(dim=-1)
        if self._cache is None:
            self._cache, self._mask, self._next_pos = pf.cache, mask, pos
        else:
            assert self._mask is not None and self._next_pos is not None
            t_batch, t_new = self._mask.shape[1], mask.shape[1]
            t = max(t_batch, t_new)
            merged = [
                (torch.cat([pad_left(kb, t - t_batch, 1), pad_left(kn, t - t_new, 1)]),
                 torch.cat([pad_left(vb, t - t_batch, 1), pad_left(vn, t - t_new, 1)]))
                for (kb, vb), (kn, vn) in zip(get_kv(self._cache), kv)
            ]
            set_kv(self._cache, merged)
            self._mask = torch.cat([pad_left(self._mask, t - t_batch, 0), pad_left(mask, t - t_new, 0)])
            self._next_pos = torch.cat([self._next_pos, pos])
        pf.cache = None
        self.rows.extend(keys)
        self._padded = not bool(self._mask.all())
        self._make_room()

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        """One forward for every joined row (in ``rows`` order); returns logits [B, V]."""
        assert self._mask is not None and self._next_pos is not None
        ids = torch.tensor(tokens, dtype=torch.long, device=self._device).view(-1, 1)
        self._mask = F.pad(self._mask, (0, 1), value=1)
        if self._padded:
            logits = self._forward(ids, self._cache, self._mask, self._next_pos.view(-1, 1))
        else:  # no padding: positions follow the cache length, no mask needed (the fast path)
            logits = self._forward(ids, self._cache)
        self._next_pos = self._next_pos + 1
        self._make_room()
        return logits

    def score(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Teacher-forced logits [len(ids) - start, V]: row j predicts ``ids[start + j]``.

        One plain forward of the whole sequence (no cache, no batch state touched), through the
        model's own head, so it is the reference the streamed logprobs are checked against.
        """
        if not 1 <= start < len(ids):
            raise ValueError(f"start must be in [1, {len(ids)}), got {start}")
        x = torch.tensor([list(ids)], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            out = self._model(input_ids=x, use_cache=False)
        logits: torch.Tensor = out.logits[0, start - 1:-1, :]
        return logits

    def leave(self, keys: AbstractSet[Key]) -> None:
        try:
            self._leave(keys)
        finally:
            keeping, self._keeping = self._keeping, []
        if self.sessions is not None:  # the batch has shrunk: now the kept entries may fit
            self._make_room()
            for session, ids, kv in keeping:
                self.sessions.put(session, ids, kv)

    def _leave(self, keys: AbstractSet[Key]) -> None:
        keep = [i for i, k in enumerate(self.rows) if k not in keys]
        if len(keep) == len(self.rows):
            return
        if not keep:
            keeping = self._keeping
            self.reset()
            self._keeping = keeping
            return
        assert self._mask is not None and self._next_pos is not None
        idx = torch.tensor(keep, dtype=torch.long, device=self._device)
        mask = self._mask.index_select(0, idx)
        first = int(mask.any(dim=0).nonzero()[0])  # leading columns that are padding in every row
        set_kv(self._cache, [(k.index_select(0, idx)[:, :, first:], v.index_select(0, idx)[:, :, first:])
                              for k, v in get_kv(self._cache)])
        self._mask = mask[:, first:]
        self._next_pos = self._next_pos.index_select(0, idx)
        self.rows = [self.rows[i] for i in keep]
        self._padded = not bool(self._mask.all())

    # -- KV kept across a session's turns ------------------------------------------------------
    def reusable(self, session: str | None, prompt_ids: Sequence[int]) -> int:
        """Prompt positions the session's kept KV would spare (0: none, or not worth a row alone)."""
        return self.sessions.reusable(session, prompt_ids) if self.sessions is not None else 0

    def keep(self, key: Key, session: str, ids: Sequence[int] | None) -> None:
        """Before ``key`` leaves: keep its KV for ``session`` (``ids``: what the cache holds, the
        prompt and every generated token but the last), or ``None``: keep nothing (a failure)."""
        if self.sessions is None:
            return
        kv = self._row_kv(key, ids) if ids is not None else None
        if kv is None or ids is None:
            self.sessions.release(session)
            return
        self._keeping.append((session, list(ids), kv))

    def _row_kv(self, key: Key, ids: Sequence[int]) -> KV | None:
        """A compact copy of one row's real positions, or None if they are not ``ids``' length."""
        if key not in self.rows or self._mask is None:
            return None
        i = self.rows.index(key)
        cols = self._mask[i].nonzero().squeeze(1)
        if len(cols) != len(ids):
            return None
        with torch.inference_mode():
            return [(k[i:i + 1].index_select(2, cols), v[i:i + 1].index_select(2, cols))
                    for k, v in get_kv(self._cache)]

    def forget(self, session: str) -> None:
        if self.sessions is not None:
            self.sessions.forget(session)

    def kv_stats(self) -> KVCacheStats | None:
        return self.sessions.stats() if self.sessions is not None else None

    def _count_prefilled(self, n: int) -> None:
        if self.sessions is not None:
            self.sessions.count_prefilled(n)

    def batch_bytes(self) -> int:
        """KV bytes of the live batch (filled positions, padding included)."""
        if self._mask is None or self._cache is None:
            return 0
        if not self._token_bytes:
            self._token_bytes = sum(k.shape[1] * k.shape[3] * k.element_size()
                                    + v.shape[1] * v.shape[3] * v.element_size() for k, v in get_kv(self._cache))
        return int(self._mask.shape[0] * self._mask.shape[1] * self._token_bytes)

    def _make_room(self) -> None:
        if self.sessions is not None:
            self.sessions.make_room(self.batch_bytes())


@dataclass
class ScriptedPrefill:
    """A scripted prompt on its way in: the token ids the script will spell, one list per row."""

    ids: list[int]
    scripts: list[list[int]]
    done: int = 0

    @property
    def remaining(self) -> int:
        return len(self.ids) - self.done


class ScriptedBackend:
    """Backend for :class:`~chatstream_lab.models.ScriptedLM`: logits that spell out a script."""

    def __init__(self, lm: Any, tokenizer: Any) -> None:
        self._lm = lm
        self._tok = tokenizer
        self._vocab = len(tokenizer)
        self.reset()

    def reset(self) -> None:
        self.rows: list[Key] = []
        self._scripts: dict[Key, tuple[list[int], list[int]]] = {}  # key -> (script, [index])

    def _logits_for(self, token: int) -> torch.Tensor:
        """The script's token at 10, three deterministic runners-up at -10, -11, -12 (logprobs
        about -20, -21, -22: visible as alternatives, never sampled in practice), the rest -1e4."""
        logits = torch.full((self._vocab,), -1e4)
        for rank in (3, 2, 1):
            logits[(token + rank) % self._vocab] = -9.0 - rank
        logits[token] = 10.0
        return logits

    def score(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Teacher-forced logits of ``ids[start:]``: position j favours the script's j-th token
        for the prompt ``ids[:start]`` (so the scripted reply scores about 0, others far lower)."""
        if not 1 <= start < len(ids):
            raise ValueError(f"start must be in [1, {len(ids)}), got {start}")
        script = self._script_for(ids[:start])
        return torch.stack([self._logits_for(script[min(j, len(script) - 1)])
                            for j in range(len(ids) - start)])

    def _script_for(self, prompt_ids: Sequence[int]) -> list[int]:
        reply = self._lm.reply_for(self._tok.decode(list(prompt_ids)))
        return [*self._tok.encode(reply, split_special_tokens=True), self._tok.eos_token_id]

    def start(self, prompt_ids: Sequence[int], session: str | None = None) -> ScriptedPrefill:
        return ScriptedPrefill(list(prompt_ids), [self._script_for(prompt_ids)])

    def prefill(self, pf: ScriptedPrefill, budget: int) -> torch.Tensor | None:
        pf.done += min(budget, pf.remaining)
        if pf.remaining:
            return None
        return self._logits_for(pf.scripts[0][0])

    def prefill_group(self, prompts: Sequence[Sequence[int]]) -> tuple[ScriptedPrefill, torch.Tensor]:
        scripts = [self._script_for(p) for p in prompts]
        return ScriptedPrefill([], scripts), torch.stack([self._logits_for(sc[0]) for sc in scripts])

    def join(self, keys: Key | list[Key], pf: ScriptedPrefill, keep: Sequence[int] | None = None) -> None:
        keys = keys if isinstance(keys, list) else [keys]
        scripts = pf.scripts if keep is None else [pf.scripts[i] for i in keep]
        for key, script in zip(keys, scripts):
            self.rows.append(key)
            self._scripts[key] = (script, [0])

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        if self._lm.token_delay:
            time.sleep(self._lm.token_delay)
        out = []
        for key in self.rows:
            script, index = self._scripts[key]
            index[0] += 1
            if self._lm.fail_after is not None and index[0] >= self._lm.fail_after:
                raise RuntimeError(f"scripted failure after {index[0]} tokens")
            out.append(self._logits_for(script[min(index[0], len(script) - 1)]))
        return torch.stack(out)

    def leave(self, keys: AbstractSet[Key]) -> None:
        self.rows = [k for k in self.rows if k not in keys]
        for k in keys:
            self._scripts.pop(k, None)

    # a script has no KV: nothing is kept across turns
    def reusable(self, session: str | None, prompt_ids: Sequence[int]) -> int:
        return 0

    def keep(self, key: Key, session: str, ids: Sequence[int] | None) -> None: ...

    def forget(self, session: str) -> None: ...

    def kv_stats(self) -> KVCacheStats | None:
        return None


def for_model(loaded: Any, *, prefix_cache_bytes: int = 64 << 20, session_kv_bytes: int = 0,
              onednn: bool = True) -> StepBackend[Any]:
    """The step-level backend for a loaded model (scripted, or HF torch)."""
    if loaded.is_scripted:
        return ScriptedBackend(loaded.model, loaded.tokenizer)
    return HFBackend(loaded.model, prefix_cache_bytes, session_kv_bytes=session_kv_bytes, onednn=onednn)
