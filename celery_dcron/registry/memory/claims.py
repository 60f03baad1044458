"""Claims and run-now requests: claim, mark sent, reject, retake, states."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from ...entries import (
    ClaimResult,
    EntryState,
    PendingClaim,
    PublishRejection,
    Tick,
)
from ...exceptions import (
    EntryNotFoundError,
)

# The registry's record types: pure frozen dataclasses (the module that holds them
# imports redis; the memory registry uses nothing else of it).
from ..claims import BrokerCommand, Enqueued
from ..codec import (
    RunRequest,
    decode_errors,
    dumps,
)

if TYPE_CHECKING:
    pass
from .base import _ENTRIES, _LOCK_SWEEP_AT, _Base, _error_tick_ms


class _Claims(_Base):
    # -- run state and claims ----------------------------------------------------------

    def states(self, names: Iterable[str] | None = None) -> dict[str, EntryState]:
        with self._op():
            return self._states(names)

    def _states(self, names: Iterable[str] | None) -> dict[str, EntryState]:
        d = self._data
        known = set(d.anchor) | set(d.last) | set(d.runs)
        wanted = known if names is None else known.intersection(names)
        return {
            name: EntryState(
                anchor_ms=d.anchor.get(name),
                last_tick_ms=d.last.get(name),
                run_count=d.runs.get(name, 0),
                last_node=d.lastnode.get(name),
            )
            for name in wanted
        }

    def claim(
        self,
        ticks: Sequence[Tick],
        *,
        node_id: str,
        lock_ttl_ms: int,
        max_runs: Mapping[str, int | None] | None = None,
    ) -> list[ClaimResult]:
        with self._op() as now:
            d = self._data
            if len(d.locks) > _LOCK_SWEEP_AT:
                d.locks = {k: exp for k, exp in d.locks.items() if exp >= now}
            results = []
            for tick in ticks:
                name, at = tick.name, tick.tick_ms
                last = d.last.get(name, -1)  # -1: none, as the script has it
                runs = d.runs.get(name, 0)
                limit = (max_runs or {}).get(name) or 0  # 0 or None: no limit
                won = False
                if at > last:
                    if not tick.fire:
                        d.last[name] = last = at
                        won = True
                    elif (limit == 0 or runs < limit) and d.locks.get((name, at), -1) < now:
                        # a lock is held up to its expiry instant, as Redis's PX keys are
                        d.locks[(name, at)] = now + lock_ttl_ms
                        d.last[name] = last = at
                        d.runs[name] = runs = runs + 1
                        d.lastnode[name] = node_id
                        d.pending[(name, at)] = node_id
                        won = True
                elif at == last and tick.fire and d.pending.get((name, at)) == node_id:
                    won = True  # our own retry: the first reply was lost
                results.append(
                    ClaimResult(
                        tick=tick, won=won, last_tick_ms=None if last < 0 else last, run_count=runs
                    )
                )
            return results

    def mark_sent(self, ticks: Sequence[Tick]) -> None:
        with self._op():
            d = self._data
            for tick in ticks:
                d.pending.pop((tick.name, tick.tick_ms), None)
                text = d.errors.get(tick.name)
                if text is not None:
                    at = _error_tick_ms(text)
                    if at is None or at <= tick.tick_ms:
                        del d.errors[tick.name]

    def enqueue(
        self, sends: Sequence[tuple[Tick, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """As the script: the commands of each tick whose pending claim is ``node_id``'s
        are appended to :attr:`enqueued` (the memory registry's broker) and the claim is
        forgotten."""
        with self._op():
            d = self._data
            out = []
            for tick, commands in sends:
                key = (tick.name, tick.tick_ms)
                if d.pending.get(key) != node_id:
                    out.append(Enqueued(tick, sent=False))
                    continue
                self.enqueued.append((tick, tuple(commands)))
                del d.pending[key]
                text = d.errors.get(tick.name)
                if text is not None:
                    at = _error_tick_ms(text)
                    if at is None or at <= tick.tick_ms:
                        del d.errors[tick.name]
                out.append(Enqueued(tick, sent=True))
            return out

    _enqueued: list[tuple[Tick, tuple[BrokerCommand, ...]]] | None = None

    @property
    def enqueued(self) -> list[tuple[Tick, tuple[BrokerCommand, ...]]]:
        """Every tick :meth:`enqueue` sent, with its commands, in order."""
        if self._enqueued is None:
            self._enqueued = []
        return self._enqueued

    def reject(self, rejections: Sequence[PublishRejection]) -> None:
        texts = [(r, dumps(r.to_json())) for r in rejections]
        with self._op():
            d = self._data
            for r, text in texts:
                if not r.run_now:
                    d.pending.pop((r.name, r.tick_ms), None)
                d.errors[r.name] = text

    def errors(self, names: Iterable[str] | None = None) -> dict[str, PublishRejection]:
        with self._op():
            return self._errors(names)

    def _errors(self, names: Iterable[str] | None) -> dict[str, PublishRejection]:
        errors = self._data.errors
        wanted = errors if names is None else {n: errors[n] for n in names if n in errors}
        return decode_errors(wanted)

    def drop_pending(self, ticks: Sequence[Tick]) -> None:
        self.mark_sent(ticks)

    def pending(self) -> list[PendingClaim]:
        with self._op():
            return [
                PendingClaim(name=name, tick_ms=at, node=node, task_id="", claimed_ms=0)
                for (name, at), node in self._data.pending.items()
            ]

    def retake(self, ticks: Sequence[Tick], *, node_id: str, lock_ttl_ms: int) -> list[bool]:
        with self._op() as now:
            keys = [(tick.name, tick.tick_ms) for tick in ticks]
            won = self._take(self._data.pending, keys, node_id, now)
            for key, ok in zip(keys, won, strict=True):
                if ok:
                    self._data.locks[key] = now + lock_ttl_ms
            return won

    def _take(
        self,
        held: dict[tuple[str, int], str],
        keys: Sequence[tuple[str, int]],
        node_id: str,
        now: int,
    ) -> list[bool]:
        """Give ``node_id`` the fields of ``held`` that are waiting (""), already its own,
        or held by a node no longer alive; absent fields are not taken."""
        out = []
        for key in keys:
            holder = held.get(key)
            ok = holder is not None and (holder in ("", node_id) or not self._is_alive(holder, now))
            if ok:
                held[key] = node_id
            out.append(ok)
        return out

    # -- run-now requests --------------------------------------------------------------

    def run_now(self, name: str) -> int:
        with self._op() as now:
            d = self._data
            if name not in d.entries:
                raise EntryNotFoundError(f"entry {name!r}: not found")
            d.requests.setdefault((name, now), "")
            self._feed(name, "run")
            self._notify(_ENTRIES)
            return now

    def requests(self) -> list[RunRequest]:
        with self._op():
            return [
                RunRequest(name=name, request_ms=at, holder=holder)
                for (name, at), holder in self._data.requests.items()
            ]

    def take_requests(self, requests: Sequence[RunRequest], *, node_id: str) -> list[bool]:
        with self._op() as now:
            keys = [(r.name, r.request_ms) for r in requests]
            return self._take(self._data.requests, keys, node_id, now)

    def done_requests(self, requests: Sequence[RunRequest]) -> None:
        with self._op():
            for request in requests:
                self._data.requests.pop((request.name, request.request_ms), None)

    def enqueue_requests(
        self, sends: Sequence[tuple[RunRequest, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """As the script: the commands of each request ``node_id`` holds are appended to
        :attr:`enqueued` (as the tick ``(name, request_ms)``) and the request is
        forgotten."""
        with self._op():
            requests = self._data.requests
            out = []
            for request, commands in sends:
                key = (request.name, request.request_ms)
                tick = Tick(name=request.name, tick_ms=request.request_ms)
                if requests.get(key) != node_id:
                    out.append(Enqueued(tick, sent=False))
                    continue
                self.enqueued.append((tick, tuple(commands)))
                del requests[key]
                out.append(Enqueued(tick, sent=True))
            return out
