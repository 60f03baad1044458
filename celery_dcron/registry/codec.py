"""What the registry returns, and how its records are written to and read from Redis.

One decoder per record: entry definitions (:func:`decode_entries`), run state
(:func:`decode_states`), nodes (:func:`decode_nodes`), ``"<ms>:<name>"`` fields of
pending claims and run-now requests (:func:`decode_fields`), heartbeat replies
(:func:`decode_heartbeat`), entries' last publish errors (:func:`decode_errors`).
Everything read back is JSON or a plain integer; nothing is unpickled. A record that
does not parse is reported or skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..entries import EntrySpec, EntryState, Node, NodeStatus, PublishRejection
from ..exceptions import InvalidEntryError
from .keys import Keys

__all__ = [
    "CrashCheck",
    "FeedPage",
    "FeedPosition",
    "FeedRecord",
    "Heartbeat",
    "Joined",
    "RunRequest",
    "Snapshot",
    "StaticSyncResult",
    "decode_crash_check",
    "decode_entries",
    "decode_entry",
    "decode_errors",
    "decode_fields",
    "decode_heartbeat",
    "decode_joined",
    "decode_nodes",
    "decode_states",
    "dumps",
    "int_or_none",
    "time_ms",
]

logger = logging.getLogger(__name__)


# -- records ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """A place in the change feed: the entries version reached, and the id of the
    record that set it (``"0-0"``: before the first record)."""

    seq: int = 0
    record_id: str = "0-0"


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One write to the entries: which entry, and how (``put``: its definition was
    written; ``del``: removed; ``state``: its run state was reset; ``run``: a run-now
    request; ``pause``: the cluster's pause flag, no entry)."""

    name: str
    kind: str
    seq: int


@dataclass(frozen=True, slots=True)
class FeedPage:
    """What one read of the feed returns: the records after a position, the position
    after them, the entries version now, and whether records were lost in between
    (``gap``: reload in full)."""

    records: list[FeedRecord]
    position: FeedPosition
    head: int
    gap: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    server_ms: int
    members_version: int
    entries_version: int
    #: the cluster-wide pause flag (pause_all): claim nothing while set
    paused: bool = False
    #: set once per life of the registry's data: a new value means Redis lost its data
    epoch: str = ""
    #: when this data was rebuilt after a loss (cluster time, ms); None on new data
    reset_ms: int | None = None
    #: the earliest heartbeat expiry of another node (server time, ms); None when alone
    peer_expiry_ms: int | None = None
    #: another incarnation holds this node id (its record has another token): this one
    #: was replaced and must claim and publish nothing more; the heartbeat wrote nothing
    superseded: bool = False
    #: the live nodes and their heartbeat expiry (server time, ms), this one included
    #: (unless superseded); what a light heartbeat (``touch``) then compares with
    alive: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Joined:
    """The reply of :data:`~celery_dcron.registry.scripts.JOIN`."""

    #: whether this incarnation now holds the id
    won: bool
    #: the record found there: the live holder when not won, the predecessor replaced
    #: (dead, expired or left behind) when won; None when the id was free
    holder: Node | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CrashCheck:
    """The reply of :data:`~celery_dcron.registry.scripts.EXPIRE_CRASHED`."""

    #: the nodes taken for dead (their expiry is now)
    taken: tuple[str, ...] = ()
    #: in how long (ms) the first of the others given becomes overdue; None: none will
    overdue_in_ms: int | None = None


def decode_crash_check(reply: Any) -> CrashCheck:
    taken, soonest = reply
    return CrashCheck(
        taken=tuple(t.decode() if isinstance(t, bytes) else str(t) for t in taken or ()),
        overdue_in_ms=int_or_none(soonest),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRequest:
    """A run-now request: an extra dispatch of ``name`` at ``request_ms``."""

    name: str
    request_ms: int
    #: "" while waiting, else the node that took it
    holder: str


@dataclass(frozen=True, slots=True)
class StaticSyncResult:
    changed: int
    #: name -> reason ("tombstoned" or "dynamic") for entries that were not written.
    skipped: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A consistent-enough picture of a namespace, read in one round trip."""

    nodes: list[Node]
    server_ms: int
    #: every entry name, sorted (also those whose definition was not read)
    names: list[str]
    entries: dict[str, EntrySpec]
    #: name -> error, for definitions that did not parse
    bad: dict[str, str]
    states: dict[str, EntryState]
    paused: bool
    tombstones: dict[str, int]
    static: set[str]
    #: when the registry was rebuilt after a data loss (cluster time, ms); None if never
    reset_ms: int | None = None
    #: name -> its last publish that can never succeed (cleared by a later success)
    errors: dict[str, PublishRejection] = field(default_factory=dict)


# -- encoders ---------------------------------------------------------------------


def dumps(data: Mapping[str, Any]) -> str:
    """Compact JSON with sorted keys (node records; entries use :meth:`EntrySpec.dumps`)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


# -- decoders ---------------------------------------------------------------------


def time_ms(seconds: Any, microseconds: Any) -> int:
    """Milliseconds from a Redis ``TIME`` reply."""
    return int(seconds) * 1000 + int(microseconds) // 1000


def int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def decode_heartbeat(raw: Sequence[Any]) -> Heartbeat:
    """The reply of :data:`~celery_dcron.registry.scripts.HEARTBEAT`."""
    return Heartbeat(
        server_ms=time_ms(raw[0], raw[1]),
        members_version=int(raw[2]),
        entries_version=int(raw[3]),
        paused=len(raw) > 4 and str(raw[4]) == "1",
        epoch=str(raw[5]) if len(raw) > 5 and raw[5] is not None else "",
        reset_ms=int(raw[6]) if len(raw) > 6 and raw[6] is not None else None,
        peer_expiry_ms=int(float(raw[7])) if len(raw) > 7 and raw[7] is not None else None,
        superseded=len(raw) > 8 and str(raw[8]) == "1",
        alive=_expiries(raw[9]) if len(raw) > 9 and raw[9] else (),
    )


def _expiries(flat: Sequence[Any]) -> tuple[tuple[str, int], ...]:
    """``(id, expiry_ms)`` pairs from a flat ``{id, expiry, id, expiry, ...}`` reply."""
    return tuple((str(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat) - 1, 2))


def decode_joined(raw: Sequence[Any]) -> Joined:
    """The reply of :data:`~celery_dcron.registry.scripts.JOIN`; a holder record that
    does not parse reads as None."""
    holder = None
    if raw[1]:
        try:
            holder = Node.from_json(json.loads(raw[1]))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("dcron: malformed node record %r: %s", raw[1], exc)
    return Joined(won=int(raw[0]) == 1, holder=holder)


def decode_nodes(
    raw_nodes: Mapping[str, str],
    statuses: Mapping[str, str],
    alive: Iterable[tuple[str, float]],
    now: tuple[int, int],
) -> tuple[list[Node], int]:
    """Live nodes (heartbeat not expired), by id, and the server time in ms. A node
    record that does not parse is logged and skipped. A record that says its ``ttl_ms``
    is not rewritten by each heartbeat: its heartbeat time is its expiry less that."""
    server_ms = time_ms(*now)
    expiry = {member: int(score) for member, score in alive}
    nodes = []
    for node_id, text in raw_nodes.items():
        if expiry.get(node_id, 0) <= server_ms:
            continue
        try:
            data = json.loads(text)
            node = Node.from_json(data)
            status = NodeStatus(statuses.get(node_id, node.status.value))
            ttl_ms = int(data.get("ttl_ms", 0))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("dcron: skipping malformed node %r: %s", node_id, exc)
            continue
        if ttl_ms > 0:
            node = replace(node, heartbeat_ms=expiry[node_id] - ttl_ms)
        nodes.append(replace(node, status=status))
    nodes.sort(key=lambda n: n.id)
    return nodes, server_ms


def decode_entry(text: str) -> EntrySpec:
    """One stored entry definition; InvalidEntryError (the cause's text) if malformed."""
    try:
        return EntrySpec.loads(text)
    except (ValueError, KeyError, TypeError) as exc:  # InvalidEntryError is a ValueError
        raise InvalidEntryError(str(exc) or type(exc).__name__) from exc


def decode_entries(texts: Mapping[str, str]) -> tuple[dict[str, EntrySpec], dict[str, str]]:
    """Every definition that parses (and is stored under its own name), and
    ``name -> error`` for the others."""
    good: dict[str, EntrySpec] = {}
    bad: dict[str, str] = {}
    for name, text in texts.items():
        try:
            spec = decode_entry(text)
        except InvalidEntryError as exc:
            bad[name] = str(exc)
            continue
        if spec.name != name:
            bad[name] = f"stored under {name!r} but named {spec.name!r}"
            continue
        if type(name) is str:
            # the caller's string for the name, kept anyway (the key of its dicts), in
            # place of the equal one decoded from the text: one string an entry less
            # (~5 MB at 100,000; the field is frozen, not the value)
            object.__setattr__(spec, "name", name)
        good[name] = spec
    return good, bad


def decode_states(
    anchor: Mapping[str, Any],
    last: Mapping[str, Any],
    runs: Mapping[str, Any],
    lastnode: Mapping[str, Any],
) -> dict[str, EntryState]:
    """Run state per entry from the anchor, last, runs and lastnode hashes (None values
    are absent fields); an entry with none of anchor, last tick or runs has no state."""
    anchor, last, runs, lastnode = (
        {n: v for n, v in h.items() if v is not None} for h in (anchor, last, runs, lastnode)
    )
    return {
        name: EntryState(
            anchor_ms=int_or_none(anchor.get(name)),
            last_tick_ms=int_or_none(last.get(name)),
            run_count=int(runs.get(name) or 0),
            last_node=lastnode.get(name),
        )
        for name in set(anchor) | set(last) | set(runs)
    }


def decode_errors(raw: Mapping[str, Any]) -> dict[str, PublishRejection]:
    """The last publish error of each entry (``name -> JSON``; None values are absent
    fields). A record that does not parse is logged and skipped."""
    errors: dict[str, PublishRejection] = {}
    for name, text in raw.items():
        if text is None:
            continue
        try:
            data = json.loads(text)
            errors[name] = PublishRejection.from_json(name, data)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("dcron: skipping malformed publish error of %r: %r", name, exc)
    return errors


def decode_fields(raw: Mapping[str, str]) -> tuple[list[tuple[str, int, str]], list[str]]:
    """``(name, ms, value)`` of each ``"<ms>:<name>"`` field (pending claims, run-now
    requests), and the fields that do not parse."""
    good: list[tuple[str, int, str]] = []
    bad: list[str] = []
    for key, value in raw.items():
        try:
            name, ms = Keys.parse_pending_field(key)
        except ValueError:
            bad.append(key)
            continue
        good.append((name, ms, value))
    return good, bad
