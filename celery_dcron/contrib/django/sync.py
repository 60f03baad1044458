"""Keep the Redis registry in step with the :class:`DynamicTask` table.

* A save or delete reaches the registry when its transaction commits (``on_commit``),
  read back from the database, so several saves in one transaction write once and a
  rolled-back save writes nothing. The rows saved in one transaction are written
  together: one read of their entries and one batched write
  (:meth:`~celery_dcron.api.DynamicTasks.add_many`), not a round trip per row. If Redis is
  unreachable then, the change waits for the next reconcile.
* ``bulk_create``, ``QuerySet.update`` and raw SQL send no signal: run
  ``manage.py dcron_sync`` (or :func:`reconcile`) afterwards.
* :func:`reconcile` (:mod:`.reconciler`) compares the rows with the registry, one process
  at a time per namespace (a lease in Redis), incrementally (the rows changed since its
  watermark) or in full (every row; also removes admin entries whose row is gone), and
  writes what is missing or different in batches. It runs from ``manage.py dcron_sync``,
  and in the beat instances: in full when one starts and right after Redis lost its data
  (before the instance restores its last ticks, so restored entries keep their tick grid
  and no tick fires twice), and every ``dcron_reconcile_interval`` seconds (incremental;
  full every ``dcron_full_reconcile_interval``).

The database wins: an admin-managed entry changed through the API or the CLI is written
back at the next full reconcile, or when its row is saved (with a warning in the log).
Pause and resume such entries in the admin.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings as django_settings
from django.db import close_old_connections, connections, transaction
from django.db.models.signals import post_delete, post_save

from celery_dcron import signals as dcron_signals

from . import writes
from .models import DynamicTask
from .reconciler import ReconcileReport, reconcile
from .writes import push, push_rows, remove, take_failures

__all__ = [
    "ReconcileReport",
    "connect_signals",
    "push",
    "push_rows",
    "reconcile",
    "remove",
    "take_failures",
    "wait_reconciled",
]

logger = logging.getLogger(__name__)

#: Reasons of the ``reconcile`` signal that ask for a full reconcile: an instance starts
#: (it knows nothing of the changes made while it was away), Redis lost its data.
FULL_REASONS = frozenset({"start", "reset"})


@dataclass
class _Changes:
    """Rows saved and deleted in the open transaction(s) of one database alias, written
    to the registry when their transaction commits."""

    #: pk of each row saved -> the (namespace, name) keys it had before (renames)
    saved: dict[Any, set[tuple[str, str]]] = field(default_factory=dict)
    #: (namespace, name) of each row deleted
    deleted: set[tuple[str, str]] = field(default_factory=set)


#: The changes not yet written, per thread and alias. A rolled-back transaction leaves
#: its changes here until the next change made outside a transaction drops them, or a
#: commit writes them: harmless, as everything is read back from the table first.
_pending = threading.local()


def _changes(using: str, *, changing: bool = False) -> _Changes:
    """The pending changes of ``using``; ``changing``: to add one (then, outside a
    transaction, whatever is left was rolled back: dropped)."""
    buffers: dict[str, _Changes] | None = getattr(_pending, "changes", None)
    if buffers is None:
        buffers = _pending.changes = {}
    changes = buffers.setdefault(using, _Changes())
    if changing and not transaction.get_connection(using).in_atomic_block:
        changes.saved.clear()
        changes.deleted.clear()
    return changes


def _flush(using: str) -> None:
    """Write the changes of the transaction that just committed (the first of its
    callbacks to run writes them all; the others find nothing left)."""
    changes = _changes(using)
    if not changes.saved and not changes.deleted:
        return
    saved, deleted = dict(changes.saved), set(changes.deleted)
    changes.saved.clear()
    changes.deleted.clear()
    # The rows are committed whatever happens here: never fail the request that saved them.
    try:
        _write(saved, deleted)
    except Exception as exc:
        logger.exception("dcron: writing %d changed dynamic tasks to the registry failed",
                         len(saved) + len(deleted))  # fmt: skip
        writes.failed(f"{len(saved) + len(deleted)} dynamic tasks not written to the "
                      f"registry ({exc!r}); see the log")  # fmt: skip


def _write(saved: dict[Any, set[tuple[str, str]]], deleted: set[tuple[str, str]]) -> None:
    """Remove the entries of deleted rows and old names, then write the saved rows, as
    the table has them now (a row gone was deleted in the same transaction)."""
    rows: list[DynamicTask] = []
    pks = list(saved)
    for start in range(0, len(pks), 500):
        rows.extend(DynamicTask.objects.filter(pk__in=pks[start : start + 500]))
    gone = set(deleted)
    for row in rows:
        gone |= saved[row.pk] - {(row.namespace, row.name)}  # renamed
    for namespace, name in sorted(gone):
        # unless a row has that name now (deleted or renamed, then taken again)
        if not DynamicTask.objects.filter(namespace=namespace, name=name).exists():
            remove(namespace, name)
    if len(rows) == 1:
        push(rows[0])
    elif rows:
        push_rows(rows)


def _on_save(sender: Any, instance: DynamicTask, using: str, **kwargs: Any) -> None:
    old_key = instance._stored_key
    instance._stored_key = (instance.namespace, instance.name)
    olds = _changes(using, changing=True).saved.setdefault(instance.pk, set())
    if old_key is not None:
        olds.add(old_key)
    transaction.on_commit(partial(_flush, using), using=using)


def _on_delete(sender: Any, instance: DynamicTask, using: str, **kwargs: Any) -> None:
    key = instance._stored_key or (instance.namespace, instance.name)
    _changes(using, changing=True).deleted.add(key)
    transaction.on_commit(partial(_flush, using), using=using)


# -- wiring ------------------------------------------------------------------------


def _on_reconcile(sender: Any, reason: str = "", **kwargs: Any) -> None:
    """Receiver of :data:`celery_dcron.signals.reconcile` in beat instances: a full
    reconcile on start and after a data loss, else an incremental one (full when due).

    It runs in a background thread (``DCRON_RECONCILE_IN_BACKGROUND``, default True): a
    reconcile of many rows must not hold the beat's scheduling loop, whose heartbeat would
    stop meanwhile. Signals that arrive while one runs are merged into one more run (full
    if any of them asked for it)."""
    namespace = getattr(getattr(sender, "settings", None), "namespace", None)
    full = reason in FULL_REASONS
    if not getattr(django_settings, "DCRON_RECONCILE_IN_BACKGROUND", True):
        _reconcile_logged(namespace, full=full, reason=reason)
        return
    global _runner
    with _runner_lock:
        previous = _wanted.get(namespace)
        merged_full = full or (previous is not None and previous[0])
        _wanted[namespace] = (merged_full, reason if previous is None else previous[1])
        if _runner is not None and _runner.is_alive():
            return
        _runner = threading.Thread(target=_drain, name="dcron-reconcile", daemon=True)
        _runner.start()


#: namespace -> (full wanted, first reason) of the reconciles waiting for the runner
_wanted: dict[str | None, tuple[bool, str]] = {}
_runner: threading.Thread | None = None
_runner_lock = threading.Lock()


def _drain() -> None:
    """The background runner: reconcile what was asked for, until nothing waits."""
    while True:
        with _runner_lock:
            if not _wanted:
                connections.close_all()  # this thread's connections
                return
            namespace, (full, reason) = _wanted.popitem()
        _reconcile_logged(namespace, full=full, reason=reason)


def wait_reconciled(timeout_s: float = 30.0) -> bool:
    """Wait until no background reconcile runs or waits (tests, shutdown); True if so."""
    with _runner_lock:
        runner = _runner
    if runner is not None:
        runner.join(timeout_s)
    with _runner_lock:
        return not _wanted and (_runner is None or not _runner.is_alive())


def _reconcile_logged(namespace: str | None, *, full: bool, reason: str) -> None:
    close_old_connections()
    try:
        report = reconcile(None if namespace is None else [namespace], full=full)
    except Exception:
        logger.exception("dcron: reconcile (%s) with the database failed", reason)
        return
    finally:
        close_old_connections()
    level = logging.INFO if report.changed or reason != "periodic" else logging.DEBUG
    logger.log(level, "dcron: reconcile (%s) with the database: %s", reason, report)


def connect_signals() -> None:
    post_save.connect(_on_save, sender=DynamicTask, dispatch_uid="dcron_dynamic_task_save")
    post_delete.connect(_on_delete, sender=DynamicTask, dispatch_uid="dcron_dynamic_task_delete")
    dcron_signals.reconcile.connect(_on_reconcile, weak=False, dispatch_uid="dcron_django")
