"""What the cluster looks like right now: nodes, entries, owners, next and last runs, and
each entry's last publish error.

One read-only view, shared by the CLI (``celery dcron status|ls|ring``) and the Django
admin, built from one :meth:`Registry.snapshot <celery_dcron.registry.Registry.snapshot>`
(one round trip). Ownership is computed here with the configured strategy, exactly as
the instances compute it, so "owner" is the node that fires the entry's next tick.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from . import planning
from .config import Settings
from .entries import EntrySpec, EntryState, Node, NodeStatus, PublishRejection
from .exceptions import DcronError
from .registry import Registry, Snapshot
from .schedules import AtSchedule, CronSchedule, IntervalSchedule, Schedule, SolarSchedule
from .strategies import get_strategy
from .ticks import tick_iso

__all__ = ["ClusterView", "describe_error", "describe_schedule", "next_run_ms", "plural"]


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 node``, ``2 nodes``, ``0 nodes``; ``plural(n, "entry", "entries")``."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"


def describe_schedule(s: Schedule) -> str:
    """A short human form: ``every 5s``, ``cron '0 7 * * *' Europe/Paris``, ``at ...``."""
    if isinstance(s, IntervalSchedule):
        return f"every {s.every_ms / 1000:g}s"
    if isinstance(s, CronSchedule):
        return f"cron {s.expr!r} {s.tz}"
    if isinstance(s, SolarSchedule):
        return f"solar {s.event} ({s.lat}, {s.lon})"
    if isinstance(s, AtSchedule):
        return f"at {tick_iso(s.at_ms)}"
    return repr(s)


def describe_error(error: PublishRejection) -> dict[str, Any]:
    """An entry's last publish error for ``ls``/``show`` (and their ``--json``): its
    record, with ``tick`` and ``at`` in ISO 8601."""
    return {**error.to_json(), "tick": tick_iso(error.tick_ms), "at": tick_iso(error.at_ms)}


def next_run_ms(spec: EntrySpec, state: EntryState) -> int | None:
    """The next tick the owner will fire, or None (paused, finished, not anchored yet):
    the engine's own rule, :func:`celery_dcron.planning.next_run_ms`."""
    if not spec.enabled:
        return None
    try:
        return planning.next_run_ms(spec, state)
    except DcronError:
        return None


class ClusterView:
    """Nodes, entries, states and ownership of one namespace, read once."""

    def __init__(self, snapshot: Snapshot, settings: Settings) -> None:
        self.snapshot = snapshot
        self.nodes = snapshot.nodes
        self.server_ms = snapshot.server_ms
        self.entries = snapshot.entries
        self.bad = snapshot.bad
        self.states = snapshot.states
        self.paused = snapshot.paused
        #: when the registry was rebuilt after Redis lost its data (ms), or None
        self.reset_ms = snapshot.reset_ms
        self.deleted = snapshot.tombstones
        self.static = snapshot.static
        #: name -> its last publish that can never succeed (cleared by a later success)
        self.errors = snapshot.errors
        strategy = get_strategy(settings.strategy, virtual_nodes=settings.virtual_nodes)
        working = [n for n in self.nodes if n.status is NodeStatus.WORKING]
        self.owner: Mapping[str, str] = strategy.assign(snapshot.names, working)

    @classmethod
    def read(
        cls, registry: Registry, settings: Settings, names: Iterable[str] | None = None
    ) -> ClusterView:
        """One round trip; with ``names``, only those entries are read in full."""
        return cls(registry.snapshot(names), settings)

    def state_of(self, name: str) -> str:
        """``active``, ``paused``, ``finished``, ``waiting`` (not anchored yet) or
        ``missing`` (not in the registry)."""
        spec = self.entries.get(name)
        if spec is None:
            return "missing"
        if not spec.enabled:
            return "paused"
        state = self.states.get(name) or EntryState()
        if planning.base_tick_ms(spec, state) is None:
            return "waiting"
        return "active" if next_run_ms(spec, state) is not None else "finished"

    def entry(self, name: str) -> dict[str, Any]:
        spec = self.entries[name]
        state = self.states.get(name) or EntryState()
        nxt = next_run_ms(spec, state)
        return {
            **spec.to_json(),
            "schedule_text": describe_schedule(spec.schedule),
            "owner": self.owner.get(name),
            "state": self.state_of(name),
            "next_tick": None if nxt is None else tick_iso(nxt),
            "last_tick": None if state.last_tick_ms is None else tick_iso(state.last_tick_ms),
            "runs": state.run_count,
            "last_node": state.last_node,
            "last_error": describe_error(error) if (error := self.errors.get(name)) else None,
        }

    def owned_by(self, node_id: str) -> int:
        return sum(1 for o in self.owner.values() if o == node_id)

    def node(self, node: Node) -> dict[str, Any]:
        return {
            "id": node.id,
            "host": node.host,
            "pid": node.pid,
            "version": node.version,
            "status": node.status.value,
            "heartbeat_age_s": round(max(self.server_ms - node.heartbeat_ms, 0) / 1000, 3),
            "started": tick_iso(node.started_ms) if node.started_ms else None,
            "entries_owned": self.owned_by(node.id),
        }


# -- text (celery dcron show, ls) ----------------------------------------------------


def describe_entry(row: dict[str, Any]) -> str:
    """An entry as ``field: value`` lines: values in JSON, times in ISO 8601, no reprs."""

    def when(ms: int | None) -> str:
        return "-" if ms is None else tick_iso(ms)

    runs = str(row["runs"]) + (f" of {row['max_runs']}" if row.get("max_runs") else "")
    grace = row.get("misfire_grace_s")
    lines = [
        ("name", row["name"]),
        ("task", row["task"]),
        ("schedule", row["schedule_text"]),
        ("state", row["state"]),
        ("source", row["source"] + (" (beat_schedule)" if row["static"] else "")),
        ("owner", row["owner"] or "- (no working node)"),
        ("next tick", row["next_tick"] or "-"),
        ("last tick", row["last_tick"] or "-"),
        ("last node", row["last_node"] or "-"),
        ("runs", runs),
        ("last error", describe_rejection(row["last_error"]) if row["last_error"] else "-"),
        ("args", json.dumps(row["args"])),
        ("kwargs", json.dumps(row["kwargs"], sort_keys=True)),
        ("options", " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                             for k, v in sorted(row["options"].items())) or "-"),
        ("start at", when(row.get("start_ms"))),
        ("end at", when(row.get("end_ms"))),
        ("after run", row.get("after_run") or "-"),
        ("misfire policy", row.get("misfire_policy") or "the dcron_misfire_policy setting"),
        ("misfire grace", "the dcron_misfire_grace setting" if grace is None else f"{grace:g}s"),
        ("description", row.get("description") or "-"),
        ("version", str(row["version"])),
    ]  # fmt: skip
    return "\n".join(f"{label + ':':<16}{value}" for label, value in lines)


def describe_rejection(error: dict[str, Any]) -> str:
    """``publish rejected (arguments) at tick=<T> id=<id> node=<node>: TypeError(...)``."""
    what = "run-now at" if error["run_now"] else "tick"
    return (
        f"publish rejected ({error['reason']}) at {what}={error['tick']} id={error['task_id']} "
        f"node={error['node']}: {error['error']} (not retried; cleared by the next tick sent)"
    )
