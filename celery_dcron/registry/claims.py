"""Claims in Redis: run state, claiming ticks, marking them sent (or rejected: a publish
that can never succeed), and taking over the unsent claims of dead nodes.

A claim is one atomic step (:data:`~celery_dcron.registry.scripts.CLAIM`): the entry's
last tick only ever grows, and a per-tick lock (``SET NX PX``) lets one node fire a tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..entries import ClaimResult, EntryState, PendingClaim, PublishRejection, Tick
from . import scripts
from .codec import decode_errors, decode_states, dumps
from .transport import Store

__all__ = ["MAX_TICKS_PER_SCRIPT", "BrokerCommand", "ClaimStore", "Enqueued"]

#: Ticks per claim or retake script. A claimed tick costs the script ~7 commands (~10 µs),
#: so one call holds Redis for a few ms at most.
MAX_TICKS_PER_SCRIPT = 500


@dataclass(frozen=True, slots=True)
class BrokerCommand:
    """One Redis command of a message's publish, as kombu's Redis transport runs it:
    ``lpush`` (``target`` the queue list, ``value`` the message), ``pexpire`` (a queue
    with ``x-expires``; ``value`` the ms) or ``publish`` (a fanout: ``target`` the
    channel). Keys are complete (kombu's ``global_keyprefix`` included)."""

    op: Literal["lpush", "pexpire", "publish"]
    target: str
    value: str


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What :meth:`ClaimStore.enqueue` did with one tick: ``sent`` (its message pushed
    and its claim no longer pending), or not because the claim is not (or no longer)
    this node's pending claim (``sent`` False, ``error`` None), or because Redis refused
    a command (``error``: its text; the claim stays pending)."""

    tick: Tick
    sent: bool
    error: str | None = None


class ClaimStore(Store):
    """The ``anchor``, ``last``, ``runs``, ``lastnode``, ``pending`` and ``errors`` keys
    and the per-tick locks."""

    def states(self, names: Iterable[str] | None = None) -> dict[str, EntryState]:
        """Shared state of the given entries (all when ``names`` is None): one round trip."""
        wanted = None if names is None else list(names)
        if wanted == []:
            return {}
        pipe = self.transport.pipeline()
        self.queue_states(pipe, wanted)
        results = self.transport.execute(pipe)
        if wanted is not None:
            results = [dict(zip(wanted, r, strict=True)) for r in results]
        return decode_states(*results)

    def queue_states(self, pipe: Any, wanted: list[str] | None) -> None:
        """Add the four state hashes to a pipeline: whole (``wanted`` None) or the fields
        of ``wanted`` (HMGET: a list of values, None where absent)."""
        k = self.keys
        for key in (k.anchor, k.last, k.runs, k.lastnode):
            if wanted is None:
                pipe.hgetall(key)
            else:
                pipe.hmget(key, wanted)

    def claim(
        self,
        ticks: Sequence[Tick],
        *,
        node_id: str,
        lock_ttl_ms: int,
        max_runs: Mapping[str, int | None] | None = None,
    ) -> list[ClaimResult]:
        """Claim a batch of ticks. Ticks of one entry go oldest first.

        One round trip per :data:`MAX_TICKS_PER_SCRIPT` ticks, one after the other, so
        that no single script holds Redis long. If one of them fails, the claims of the
        earlier ones stay made (and pending): they are published by :meth:`retake`.
        """
        k = self.keys
        raw: list[Any] = []
        for part in _parts(ticks):
            locks = [k.lock(tick.name, tick.tick_ms) for tick in part]
            args: list[Any] = [node_id, lock_ttl_ms]
            for tick in part:
                limit = (max_runs or {}).get(tick.name) or 0
                args.extend((tick.name, tick.tick_ms, 1 if tick.fire else 0, limit))
            raw.extend(self.transport.call_durable(scripts.CLAIM, args, locks))
        results = []
        for tick, (won, last, runs) in zip(ticks, raw, strict=True):
            last_ms = int(last)
            results.append(
                ClaimResult(
                    tick=tick,
                    won=bool(int(won)),
                    last_tick_ms=None if last_ms < 0 else last_ms,
                    run_count=int(runs),
                )
            )
        return results

    def mark_sent(self, ticks: Sequence[Tick]) -> None:
        """Forget the pending claims of ``ticks``: they were published. An entry's last
        publish error goes too, unless it is newer than the tick sent."""
        if ticks:
            args = [x for tick in ticks for x in (tick.name, tick.tick_ms)]
            # durable: a lost mark would make the claim be sent again
            self.transport.call_durable(scripts.MARK_SENT, args)

    def enqueue(
        self, sends: Sequence[tuple[Tick, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """Send claimed ticks through this Redis, the broker's: per tick, if its pending
        claim is ``node_id``'s, run its message's broker commands and forget the claim,
        atomically (:data:`~celery_dcron.registry.scripts.ENQUEUE`). One round trip per
        :data:`MAX_TICKS_PER_SCRIPT` ticks; a failure leaves each tick either sent or
        pending, never both, so that retrying (:meth:`retake`) cannot send one twice."""
        return send_through(self, scripts.ENQUEUE, sends, node_id=node_id)

    def reject(self, rejections: Sequence[PublishRejection]) -> None:
        """Finish ticks whose publish can never succeed: forget their pending claims and
        keep each one as its entry's last error (a later one replaces it)."""
        if rejections:
            args: list[Any] = []
            for r in rejections:
                args.extend((r.name, "" if r.run_now else r.tick_ms, dumps(r.to_json())))
            self.transport.call_durable(scripts.REJECT, args)

    def errors(self, names: Iterable[str] | None = None) -> dict[str, PublishRejection]:
        """The last publish error of the given entries (all when ``names`` is None)."""
        wanted = None if names is None else list(names)
        if wanted == []:
            return {}
        pipe = self.transport.pipeline()
        self.queue_errors(pipe, wanted)
        (raw,) = self.transport.execute(pipe)
        return decode_errors(raw if wanted is None else dict(zip(wanted, raw, strict=True)))

    def queue_errors(self, pipe: Any, wanted: list[str] | None) -> None:
        """Add the ``errors`` hash to a pipeline: whole, or the fields of ``wanted``."""
        if wanted is None:
            pipe.hgetall(self.keys.errors)
        else:
            pipe.hmget(self.keys.errors, wanted)

    def pending(self) -> list[PendingClaim]:
        """Claims not yet marked sent (a malformed field is logged and dropped)."""
        return [
            PendingClaim(name=name, tick_ms=tick_ms, node=node, task_id="", claimed_ms=0)
            for name, tick_ms, node in self.read_fields(self.keys.pending, "pending claim")
        ]

    def retake(self, ticks: Sequence[Tick], *, node_id: str, lock_ttl_ms: int) -> list[bool]:
        """Take over unsent claims that are ours or whose claimer is dead (one round trip
        per :data:`MAX_TICKS_PER_SCRIPT` ticks)."""
        k = self.keys
        raw: list[Any] = []
        for part in _parts(ticks):
            locks = [k.lock(t.name, t.tick_ms) for t in part]
            fields = [k.pending_field(t.name, t.tick_ms) for t in part]
            raw.extend(
                self.transport.call_durable(scripts.RETAKE, [node_id, lock_ttl_ms, *fields], locks)
            )
        return [bool(int(x)) for x in raw]

    def drop_pending(self, ticks: Sequence[Tick]) -> None:
        """Forget unsent claims (their entry was removed)."""
        self.mark_sent(ticks)


def _parts(ticks: Sequence[Tick]) -> list[Sequence[Tick]]:
    """``ticks`` cut in order into slices of at most :data:`MAX_TICKS_PER_SCRIPT`."""
    step = MAX_TICKS_PER_SCRIPT
    return [ticks[i : i + step] for i in range(0, len(ticks), step)]


def send_through(
    store: Store,
    script: scripts.Script,
    sends: Sequence[tuple[Tick, Sequence[BrokerCommand]]],
    *,
    node_id: str,
) -> list[Enqueued]:
    """Run ``script`` (ENQUEUE, or ENQUEUE_REQUESTS with a run-now request as the tick
    ``(name, request_ms)``) on ``sends``, :data:`MAX_TICKS_PER_SCRIPT` per call; each
    message's queue keys go into KEYS, after the script's own."""
    out: list[Enqueued] = []
    fixed = len(script.keys)
    for start in range(0, len(sends), MAX_TICKS_PER_SCRIPT):
        part = sends[start : start + MAX_TICKS_PER_SCRIPT]
        queues: dict[str, int] = {}  # key -> its index in KEYS (1-based, after the fixed)
        args: list[Any] = [node_id]
        for tick, commands in part:
            args.extend((tick.name, tick.tick_ms, len(commands)))
            for c in commands:
                target = c.target
                if c.op != "publish":
                    target = str(queues.setdefault(c.target, len(queues) + fixed + 1))
                args.extend((c.op, target, c.value))
        # durable: with WAIT, a push counts once replicated, as a claim does
        raw = store.transport.call_durable(script, args, list(queues))
        for (tick, _), result in zip(part, raw, strict=True):
            if isinstance(result, int):
                out.append(Enqueued(tick, sent=bool(result)))
            else:
                out.append(Enqueued(tick, sent=False, error=str(result)))
    return out
