"""Keep the Redis registry in step with the :class:`DynamicTask` table.

* A save or delete reaches the registry when its transaction commits (``on_commit``),
  read back from the database, so several saves in one transaction write once and a
  rolled-back save writes nothing. If Redis is unreachable then, the change waits for
  the next reconcile.
* :func:`reconcile` compares every row with the registry (one round trip for the
  registry, one query for the rows) and writes what is missing or different, removes
  admin entries whose row is gone, and copies run counts and finished one-offs back into
  the rows. It runs from ``manage.py dcron_sync``, and in every beat instance when it
  starts, right after Redis lost its data (before the instance restores its last ticks,
  so restored entries keep their tick grid and no tick fires twice) and every
  ``dcron_reconcile_interval`` seconds.

The database wins: an admin-managed entry changed through the API or the CLI is written
back at the next reconcile (with a warning in the log). Pause and resume such entries in
the admin.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from django.core.exceptions import ValidationError
from django.db import close_old_connections, transaction
from django.db.models.signals import post_delete, post_save

from celery_dcron import signals as dcron_signals
from celery_dcron.api import DynamicTasks
from celery_dcron.entries import EntrySpec, EntryState
from celery_dcron.exceptions import (
    ConflictError,
    DcronError,
    EntryNotFoundError,
    RegistryUnavailableError,
)
from celery_dcron.status import next_run_ms

from .models import AfterRun, DynamicTask
from .validators import SOURCE, dynamic_tasks, spec_for

__all__ = ["ReconcileReport", "connect_signals", "push", "reconcile", "remove"]

logger = logging.getLogger(__name__)

_local = threading.local()


def take_failures() -> list[str]:
    """Messages of pushes that failed in this thread since the last call (for the admin)."""
    failures: list[str] = getattr(_local, "failures", [])
    _local.failures = []
    return failures


def _failed(message: str) -> None:
    logger.warning("dcron: %s", message)
    if not hasattr(_local, "failures"):
        _local.failures = []
    _local.failures.append(message)


def _same(a: EntrySpec, b: EntrySpec) -> bool:
    return a.with_changes(version=0) == b.with_changes(version=0)


# -- the two writes ------------------------------------------------------------------
# Everything this app writes to Redis goes through these two functions, and they go
# through the public API (DynamicTasks), as any other client of the registry.


def _write(
    tasks: DynamicTasks, spec: EntrySpec, *, expected_version: int | None, force: bool
) -> None:
    tasks.put(spec, expected_version=expected_version, force=force)


def _discard(tasks: DynamicTasks, spec: EntrySpec) -> None:
    """Remove the entry ``spec`` unless it changed since it was read (ConflictError)."""
    tasks.remove(spec.name, expected_version=spec.version)


def _existing(tasks: DynamicTasks, name: str) -> EntrySpec | None:
    try:
        return tasks.get(name)
    except EntryNotFoundError:
        return None


def push(task: DynamicTask) -> bool:
    """Write the entry of ``task`` to the registry now. False if it could not (logged)."""
    tasks = dynamic_tasks(task.namespace)
    try:
        spec = spec_for(task)
    except ValidationError as exc:
        _failed(f"dynamic task {task}: not written to the registry: {exc.messages}")
        return False
    try:
        existing = _existing(tasks, task.name)
        if existing is not None and existing.source != SOURCE:
            _failed(f"dynamic task {task}: not written: a {existing.source} entry has that name")
            return False
        if existing is not None and _same(existing, spec):
            return True
        _write(tasks, spec, expected_version=None, force=True)
    except DcronError as exc:
        _failed(
            f"dynamic task {task}: not written to the registry yet ({exc}); "
            "the next reconcile (dcron_sync, or a beat instance) will write it"
        )
        return False
    return True


def remove(namespace: str, name: str) -> bool:
    """Remove the admin entry ``name`` from the registry (not a static or API one)."""
    tasks = dynamic_tasks(namespace)
    try:
        existing = _existing(tasks, name)
        if existing is None or existing.source != SOURCE:
            return True
        _discard(tasks, existing)
    except DcronError as exc:
        _failed(
            f"dynamic task {namespace}/{name}: not removed from the registry yet ({exc}); "
            "the next reconcile will remove it"
        )
        return False
    return True


def _after_commit_save(pk: int, old_key: tuple[str, str] | None) -> None:
    # The row is committed whatever happens here: never fail the request that saved it.
    try:
        task = DynamicTask.objects.filter(pk=pk).first()
        if task is None:
            return  # deleted later in the same transaction: the delete handler removes it
        if old_key is not None and old_key != (task.namespace, task.name):
            remove(*old_key)
        push(task)
    except Exception as exc:
        logger.exception("dcron: dynamic task #%s: writing it to the registry failed", pk)
        _failed(f"dynamic task #{pk}: not written to the registry ({exc!r}); see the log")


def _after_commit_delete(key: tuple[str, str]) -> None:
    try:
        remove(*key)
    except Exception as exc:
        logger.exception("dcron: dynamic task %s/%s: removing it from the registry failed", *key)
        _failed(f"dynamic task {key[0]}/{key[1]}: not removed from the registry ({exc!r})")


def _on_save(sender: Any, instance: DynamicTask, using: str, **kwargs: Any) -> None:
    old_key = instance._stored_key
    instance._stored_key = (instance.namespace, instance.name)
    pk = instance.pk
    transaction.on_commit(lambda: _after_commit_save(pk, old_key), using=using)


def _on_delete(sender: Any, instance: DynamicTask, using: str, **kwargs: Any) -> None:
    key = instance._stored_key or (instance.namespace, instance.name)
    transaction.on_commit(lambda: _after_commit_delete(key), using=using)


# -- reconcile -------------------------------------------------------------------


@dataclass
class ReconcileReport:
    """What one reconcile did (or, with ``dry_run``, would do)."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rows_deleted: list[str] = field(default_factory=list)
    rows_updated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed or self.rows_deleted or self.rows_updated)

    def __str__(self) -> str:
        parts = [
            f"{len(self.written)} written",
            f"{len(self.removed)} removed",
            f"{len(self.rows_updated)} rows updated",
            f"{len(self.rows_deleted)} finished rows deleted",
        ]
        if self.errors:
            parts.append(f"{len(self.errors)} errors")
        return ", ".join(parts)


def _ms_to_dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def reconcile(namespaces: Iterable[str] | None = None, *, dry_run: bool = False) -> ReconcileReport:
    """Bring the registry in line with the table; see the module docstring.

    ``namespaces``: registry namespaces to reconcile (default: every namespace a row
    names, and the app's ``dcron_namespace``)."""
    report = ReconcileReport()
    groups: dict[str, list[DynamicTask]] = defaultdict(list)
    for task in DynamicTask.objects.all():
        groups[dynamic_tasks(task.namespace).settings.namespace].append(task)
    wanted = set(groups) | {dynamic_tasks("").settings.namespace}
    if namespaces is not None:
        wanted = set(namespaces)
    for namespace in sorted(wanted):
        try:
            _reconcile_namespace(namespace, groups.get(namespace, []), report, dry_run)
        except RegistryUnavailableError as exc:
            report.errors.append(f"namespace {namespace!r}: {exc}")
            logger.warning("dcron: reconcile of namespace %r stopped: %s", namespace, exc)
    return report


def _reconcile_namespace(
    namespace: str, rows: list[DynamicTask], report: ReconcileReport, dry_run: bool
) -> None:
    tasks = dynamic_tasks(namespace)
    snap = tasks.registry.snapshot()  # a read: one round trip for the whole namespace
    seen: set[str] = set()
    for task in rows:
        seen.add(task.name)
        label = f"{namespace}/{task.name}"
        existing = snap.entries.get(task.name)
        state = snap.states.get(task.name) or EntryState()
        if existing is not None and existing.source != SOURCE:
            report.errors.append(f"{label}: a {existing.source} entry has that name")
            logger.error(
                "dcron: dynamic task %s not written: a %s entry has that name",
                label,
                existing.source,
            )
            continue
        if (
            existing is None
            and task.name in snap.tombstones
            and task.after_run in (AfterRun.DELETE, AfterRun.TOMBSTONE)
        ):
            # Its last run deleted it: do the same to the row.
            report.rows_deleted.append(label)
            if not dry_run:
                DynamicTask.objects.filter(pk=task.pk).delete()
                if task.after_run == AfterRun.DELETE:
                    tasks.reuse_deleted(task.name)
            continue
        if existing is not None:
            _mirror_state(task, existing, state, label, report, dry_run)
        try:
            spec = spec_for(task)
        except ValidationError as exc:
            report.errors.append(f"{label}: {'; '.join(exc.messages)}")
            logger.error("dcron: dynamic task %s is invalid, not written: %s", label, exc.messages)
            continue
        if existing is not None and _same(existing, spec):
            continue
        if existing is not None:
            logger.warning(
                "dcron: dynamic task %s differs in the registry; writing the "
                "database's version back",
                label,
            )
        report.written.append(label)
        if dry_run:
            continue
        try:
            _write(
                tasks,
                spec,
                expected_version=None if existing is None else existing.version,
                force=existing is None and task.name in snap.tombstones,
            )
        except ConflictError:
            # Written by someone else since the snapshot (a save in the admin): theirs is
            # newer than ours; the next reconcile checks again.
            report.written.remove(label)
    for name, spec in snap.entries.items():
        if spec.source == SOURCE and name not in seen:
            report.removed.append(f"{namespace}/{name}")
            if not dry_run:
                try:
                    _discard(tasks, spec)
                except ConflictError:
                    report.removed.pop()
    if report.changed:
        logger.info("dcron: reconciled namespace %r with the database: %s", namespace, report)


def _mirror_state(
    task: DynamicTask,
    existing: EntrySpec,
    state: EntryState,
    label: str,
    report: ReconcileReport,
    dry_run: bool,
) -> None:
    """Copy run count and last run into the row; a finished ``disable`` one disables it."""
    updates: dict[str, Any] = {}
    last = _ms_to_dt(state.last_tick_ms)
    if state.last_tick_ms is not None and state.run_count != task.total_run_count:
        updates["total_run_count"] = state.run_count
    if last is not None and last != task.last_run_at:
        updates["last_run_at"] = last
    still_due = next_run_ms(existing.with_changes(enabled=True), state) is not None
    finished = state.run_count > 0 and not still_due
    if task.after_run == AfterRun.DISABLE and finished and not existing.enabled and task.enabled:
        updates["enabled"] = False
    if updates:
        report.rows_updated.append(label)
        if not dry_run:
            DynamicTask.objects.filter(pk=task.pk).update(**updates)
            for key, value in updates.items():
                setattr(task, key, value)


# -- wiring ------------------------------------------------------------------------


def _on_reconcile(sender: Any, reason: str = "", **kwargs: Any) -> None:
    """Receiver of :data:`celery_dcron.signals.reconcile` in beat instances."""
    namespace = getattr(getattr(sender, "settings", None), "namespace", None)
    close_old_connections()
    try:
        report = reconcile(None if namespace is None else [namespace])
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
