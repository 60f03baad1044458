"""A read-only picture of a whole namespace in one round trip (status pages, CLI, admin)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .claims import ClaimStore
from .codec import (
    Snapshot,
    decode_entries,
    decode_errors,
    decode_nodes,
    decode_states,
    int_or_none,
)
from .nodes import NodeStore
from .transport import Store, Transport

__all__ = ["SnapshotReader"]


class SnapshotReader(Store):
    """Reads nodes, entries, states, last publish errors, flags and tombstones together,
    with the same queries and decoders as the stores that own them."""

    def __init__(self, transport: Transport, nodes: NodeStore, claims: ClaimStore) -> None:
        super().__init__(transport)
        self._nodes = nodes
        self._claims = claims

    def snapshot(self, names: Iterable[str] | None = None) -> Snapshot:
        """Nodes, entries, states, last publish errors, flags and tombstones in one round
        trip (for status pages). With ``names``, only those entries' definitions, states
        and errors are read;
        ``Snapshot.names`` still lists every entry (ownership needs the whole list)."""
        k = self.keys
        wanted = None if names is None else list(names)
        pipe = self.transport.pipeline()
        self._nodes.queue_nodes(pipe)
        pipe.hkeys(k.entries)
        if wanted is None:
            pipe.hgetall(k.entries)
        elif wanted:
            pipe.hmget(k.entries, wanted)
        if wanted != []:
            self._claims.queue_states(pipe, wanted)
        pipe.hmget(k.meta, ["paused", "reset"])
        pipe.hgetall(k.tombstones)
        pipe.hkeys(k.static)
        if wanted != []:
            self._claims.queue_errors(pipe, wanted)
        raw = self.transport.execute(pipe)
        nodes, server_ms = decode_nodes(*raw[:4])
        all_names: list[str] = sorted(raw[4])
        if wanted == []:
            hashes: list[dict[str, Any]] = [{} for _ in range(5)]
            rest = raw[5:]
        else:
            hashes = raw[5:10]
            if wanted is not None:
                hashes = [dict(zip(wanted, r, strict=True)) for r in hashes]
            rest = raw[10:]
        texts, *state_hashes = hashes
        entries, bad = decode_entries({n: v for n, v in texts.items() if v is not None})
        (paused, reset), tombstones, static, *errors = rest
        raw_errors: dict[str, Any] = {}
        if errors:
            raw_errors = errors[0] if wanted is None else dict(zip(wanted, errors[0], strict=True))
        return Snapshot(
            nodes=nodes,
            server_ms=server_ms,
            names=all_names,
            entries=entries,
            bad=bad,
            states=decode_states(*state_hashes),
            paused=paused == "1",
            tombstones={n: int(ms) for n, ms in tombstones.items()},
            static=set(static),
            reset_ms=int_or_none(reset),
            errors=decode_errors(raw_errors),
        )
