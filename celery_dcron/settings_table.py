"""The table of every ``dcron_*`` setting: name, default, type and meaning.

The single source of the settings' names, defaults and docs: :mod:`celery_dcron.config`
reads and validates them, and the documentation's reference page is checked against this
table by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_REDIS_URL", "SETTINGS", "Setting"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: Any
    type: str
    doc: str


#: Every ``dcron_*`` setting: name, default, type and meaning.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "dcron_redis_url",
        None,
        "str",
        "Redis holding the registry. ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, "
        "with password or ACL user; for Redis Sentinel ``sentinel://host:26379;"
        "sentinel://host2:26379`` (with ``master_name`` in "
        "``dcron_redis_transport_options``), for Redis Cluster ``redis+cluster://host:6379;"
        "redis+cluster://host2:6379`` (``rediss+cluster://`` with TLS). Default: the broker "
        "URL when it is a ``redis://``, ``rediss://`` or ``sentinel://`` URL, else "
        f"``{DEFAULT_REDIS_URL}``.",
    ),
    Setting(
        "dcron_redis_transport_options",
        None,
        "dict or None",
        "Options of a ``sentinel://`` ``dcron_redis_url``, with the keys of Celery's "
        "``broker_transport_options``: ``master_name`` (required), ``sentinel_kwargs`` "
        "(connection options of the sentinels themselves, e.g. their ``password``), "
        "``min_other_sentinels``, and ``ssl`` (TLS to the master: ``True`` or a dict of "
        "redis-py ``ssl_*`` options). ``None``: when the URL is the broker's, the "
        "sentinel keys of ``broker_transport_options``.",
    ),
    Setting(
        "dcron_redis_wait_replicas",
        0,
        "int",
        "A claim counts only once this many replicas have it (Redis ``WAIT``, in the "
        "claim's round trip): until then its tick is not published and the claim is "
        "retried, as when Redis is unreachable. Guards against a failover that loses the "
        "last writes; see Redis Sentinel and Cluster in the operations guide for the value "
        "to choose. ``0``: do not wait.",
    ),
    Setting(
        "dcron_redis_wait_timeout",
        0.5,
        "float (seconds)",
        "How long a claim waits for ``dcron_redis_wait_replicas`` before this attempt is "
        "given up (and retried). Must be below ``dcron_socket_timeout``.",
    ),
    Setting(
        "dcron_key_prefix",
        "dcron",
        "str",
        "Prefix of every Redis key and channel of celery_dcron.",
    ),
    Setting(
        "dcron_namespace",
        "default",
        "str",
        "Cluster name: instances share entries and ownership only within one namespace, "
        "so one Redis can serve several isolated clusters.",
    ),
    Setting(
        "dcron_heartbeat_interval",
        None,
        "float (seconds) or None",
        "How often an instance refreshes its heartbeat and checks for changes. ``None``: "
        "a third of ``dcron_node_ttl`` (0.833 s by default), so that setting the TTL alone "
        "is enough.",
    ),
    Setting(
        "dcron_node_ttl",
        2.5,
        "float (seconds)",
        "An instance whose heartbeat is older than this is dead; its entries move to the "
        "others: a crashed or frozen instance's entries fire again within about this long. "
        "Must be at least 3 heartbeat intervals. Raise it (with nothing else) where a "
        "process may stall longer, e.g. long GC pauses or a slow broker.",
    ),
    Setting(
        "dcron_crash_detection",
        True,
        "bool",
        "Move a crashed instance's entries in about one heartbeat instead of one "
        "``dcron_node_ttl``: each instance holds a subscription to a channel of its own "
        "while it runs, which Redis drops as soon as its process dies; an instance whose "
        "channel has no subscriber and whose heartbeat is one heartbeat interval (plus "
        "0.1 s) late is taken for dead. A frozen or partitioned instance keeps its "
        "connections and still waits for the TTL. Off by itself (the TTL alone decides) on "
        "Redis Cluster, where ``PUBSUB NUMSUB`` is refused (an ACL, a proxy), and for an "
        "instance without its event listener. ``False`` turns it off.",
    ),
    Setting(
        "dcron_node_id",
        None,
        "str or None",
        "This instance's node id (its entries follow it). A restarted instance with the "
        "same id takes over its previous incarnation at once: its entries, and its claims "
        "not yet sent (re-published with their task ids), without waiting for "
        "``dcron_node_ttl``. An id held by a running instance is refused at start. Set it "
        "where the host name changes between restarts, e.g. to the pod name of a "
        "StatefulSet. ``None``: ``<host>:<slot>``, the slot the lowest number that no "
        "running instance of this host holds.",
    ),
    Setting(
        "dcron_strategy",
        "consistent_hash",
        "str",
        "How entries are split between instances: ``consistent_hash``, ``rendezvous``, "
        "``hash_slot``, ``modulo``, ``weighted``, ``round_robin``, ``range``, or a dotted "
        "path to a class.",
    ),
    Setting(
        "dcron_virtual_nodes",
        160,
        "int",
        "Virtual nodes per instance on the consistent-hash ring.",
    ),
    Setting(
        "dcron_node_weight",
        1.0,
        "float",
        "This instance's weight under the ``weighted`` and ``consistent_hash`` strategies (a "
        "weight of 2 takes about twice the share).",
    ),
    Setting(
        "dcron_misfire_policy",
        "once",
        "str",
        "What a new owner does with ticks missed while nobody fired them: ``once`` "
        "(coalesce into one run), ``all`` (run each, bounded), ``skip``. Per entry: "
        "the ``misfire_policy`` key of a ``beat_schedule`` item.",
    ),
    Setting(
        "dcron_misfire_grace",
        None,
        "float (seconds) or None",
        "A missed tick older than this is dropped and logged instead of run. ``None``: no "
        "limit (like Celery beat). Per entry: the ``misfire_grace`` key.",
    ),
    Setting(
        "dcron_misfire_max_catchup",
        100,
        "int",
        "Under the ``all`` policy, at most this many missed ticks of one entry run; older "
        "ones are dropped and logged.",
    ),
    Setting(
        "dcron_lock_ttl",
        30.0,
        "float (seconds)",
        "Lifetime of a per-tick fire lock (``SET NX PX``): the same tick cannot be claimed "
        "again while it lives, even after a ``reset``. A claim never marked sent is "
        "re-published by the entry's owner once its claimer is dead.",
    ),
    Setting(
        "dcron_enqueue",
        "auto",
        "str",
        "How a claimed tick reaches the broker. ``auto``: when the broker is the "
        "registry's Redis (same server and database, kombu's ``redis://`` transport; the "
        "default deployment, where ``dcron_redis_url`` falls back to the broker URL), the "
        "message Celery would publish is pushed onto its queue list and the claim marked "
        "sent by one Lua script, so no crash or freeze can send a tick twice; with any "
        "other broker, as ``publish``. ``publish``: always Celery's own publish, then a "
        'separate "mark sent" (a crash between the two can send a tick twice, with the '
        "same task id). The instance logs which one it uses, and why, once.",
    ),
    Setting(
        "dcron_check_tasks",
        False,
        "bool",
        "What an instance does with an entry whose task its Celery app does not import: "
        "``False`` sends it by name, as Celery beat does (the workers must know it); ``True`` "
        "skips it and logs an error. Either way, an entry whose args or kwargs do not fit "
        "the signature of a task the instance imports is skipped and logged, naming the "
        "field: Celery would refuse to send it (a task with ``typing=False`` is not "
        "checked). The API and the CLI do not read this setting: they refuse unknown task "
        "names unless given ``check_tasks=False`` or ``--no-check-task``.",
    ),
    Setting(
        "dcron_default_task",
        None,
        "str or None",
        "Task that runs dynamic entries defined by a payload only (no task): it is called "
        "with the payload as its ``payload`` keyword argument. ``None``: such entries are "
        "refused.",
    ),
    Setting(
        "dcron_max_payload_bytes",
        65536,
        "int",
        "Largest JSON size of a dynamic entry's args, kwargs and payload together; bigger "
        "entries are refused when they are added.",
    ),
    Setting(
        "dcron_socket_timeout",
        None,
        "float (seconds) or None",
        "Socket timeout of Redis commands; must be below the node TTL. ``None``: half of "
        "``dcron_node_ttl``, at most 2 s (1.25 s by default).",
    ),
    Setting(
        "dcron_reconcile_interval",
        60.0,
        "float (seconds)",
        "How often each instance asks an external source of entries (the Django app "
        "``celery_dcron.contrib.django``, or any receiver of the ``reconcile`` signal) to "
        "bring the registry up to date. It also asks when it starts and after Redis lost "
        "its data. ``0`` turns the periodic call off.",
    ),
    Setting(
        "dcron_full_reconcile_interval",
        3600.0,
        "float (seconds)",
        "How often the reconcile of the Django app (``celery_dcron.contrib.django``) is a "
        "full one: every row compared with the registry, and the admin entries whose row "
        "is gone removed. The reconciles in between read only the rows changed since the "
        "last one. A beat instance also reconciles in full when it starts and after Redis "
        "lost its data. ``0``: every reconcile is a full one.",
    ),
    Setting(
        "dcron_metrics_port",
        None,
        "int or None",
        "Serve Prometheus metrics on this port (extra ``metrics``: prometheus-client); "
        "``None``: off; ``0``: a free port, logged. One port per instance on a host.",
    ),
    Setting(
        "dcron_metrics_addr",
        "0.0.0.0",
        "str",
        "Address the metrics server listens on.",
    ),
)
