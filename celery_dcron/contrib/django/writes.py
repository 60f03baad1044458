"""How this app writes to the registry: one row, or many rows in batches.

Everything it writes goes through the public API (:class:`~celery_dcron.api.DynamicTasks`),
as any other client of the registry: ``put`` and ``remove`` for one entry, ``add_many``
for many (one pipelined round trip per chunk). A write never takes the name of a static
or an API entry.

Failures of writes made for a save or a delete are kept per thread for the admin to show
(:func:`take_failures`); the next reconcile repairs what they left undone.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from celery_dcron.api import DynamicTasks
from celery_dcron.bulk import EntryProblem
from celery_dcron.entries import EntrySpec
from celery_dcron.exceptions import DcronError, EntryNotFoundError

from .models import DynamicTask
from .validators import SOURCE, dynamic_tasks, spec_for

__all__ = [
    "BatchItem",
    "BatchOutcome",
    "discard",
    "failed",
    "push",
    "push_rows",
    "remove",
    "same",
    "take_failures",
    "write",
    "write_batch",
]

logger = logging.getLogger(__name__)

_local = threading.local()


def take_failures() -> list[str]:
    """Messages of pushes that failed in this thread since the last call (for the admin)."""
    failures: list[str] = getattr(_local, "failures", [])
    _local.failures = []
    return failures


def failed(message: str) -> None:
    """Log ``message`` and keep it for :func:`take_failures`."""
    logger.warning("dcron: %s", message)
    if not hasattr(_local, "failures"):
        _local.failures = []
    _local.failures.append(message)


def same(a: EntrySpec, b: EntrySpec) -> bool:
    """The two definitions are equal but for their version."""
    return a.with_changes(version=0) == b.with_changes(version=0)


# -- one entry ---------------------------------------------------------------------


def write(
    tasks: DynamicTasks, spec: EntrySpec, *, expected_version: int | None, force: bool
) -> None:
    tasks.put(spec, expected_version=expected_version, force=force)


def discard(tasks: DynamicTasks, spec: EntrySpec) -> None:
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
        failed(f"dynamic task {task}: not written to the registry: {exc.messages}")
        return False
    try:
        existing = _existing(tasks, task.name)
        if existing is not None and existing.source != SOURCE:
            failed(f"dynamic task {task}: not written: a {existing.source} entry has that name")
            return False
        if existing is not None and same(existing, spec):
            return True
        write(tasks, spec, expected_version=None, force=True)
    except DcronError as exc:
        failed(
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
        discard(tasks, existing)
    except DcronError as exc:
        failed(
            f"dynamic task {namespace}/{name}: not removed from the registry yet ({exc}); "
            "the next reconcile will remove it"
        )
        return False
    return True


# -- many entries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchItem:
    """A row to write, its entry, and whether the registry had one of that name when read."""

    row: DynamicTask
    spec: EntrySpec
    exists: bool


@dataclass(slots=True)
class BatchOutcome:
    """What :func:`write_batch` did not write, and how many chunks it sent."""

    #: ``add_many`` chunks sent (one pipelined round trip each; and per ``add_many`` call
    #: with cron or one-off entries, one to read the server's time)
    chunks: int
    #: items the registry refused: their name was taken, deleted or made static since read
    refused: list[tuple[BatchItem, EntryProblem]]
    #: items whose entry is invalid (or whose name came twice in the batch)
    invalid: list[tuple[BatchItem, EntryProblem]]


def write_batch(tasks: DynamicTasks, items: Sequence[BatchItem], *, chunk: int) -> BatchOutcome:
    """Write ``items`` with :meth:`DynamicTasks.add_many`, ``chunk`` at a time.

    Entries the registry did not have are created (``replace=False``: one that appeared
    since it was read, a save's push or an API entry, is left alone and reported refused);
    the others are replaced (the database wins). Raises RegistryUnavailableError (then
    some chunks may be written).
    """
    outcome = BatchOutcome(chunks=0, refused=[], invalid=[])
    for exists in (False, True):
        group = [item for item in items if item.exists is exists]
        if not group:
            continue
        result = tasks.add_many(
            [item.spec for item in group], replace=exists, chunk=chunk, skip_invalid=True
        )
        outcome.chunks += math.ceil(len(group) / chunk)
        outcome.refused.extend((group[p.index], p) for p in result.refused)
        outcome.invalid.extend((group[p.index], p) for p in result.invalid)
    return outcome


def push_rows(rows: Iterable[DynamicTask], *, chunk: int = 1000) -> None:
    """Write the entries of many rows (saved in one transaction): per namespace, one read
    of their entries and one batched write per ``chunk``, instead of a round trip per row.
    A row that cannot go in the batch (a deleted name to write over, a refusal) is
    pushed on its own (:func:`push`), which reports it."""
    groups: dict[str, list[DynamicTask]] = {}
    for row in rows:
        groups.setdefault(row.namespace, []).append(row)
    for namespace, group in groups.items():
        for start in range(0, len(group), chunk):
            _push_group(dynamic_tasks(namespace), group[start : start + chunk], chunk)


def _push_group(tasks: DynamicTasks, rows: list[DynamicTask], chunk: int) -> None:
    try:
        snap = tasks.registry.snapshot([row.name for row in rows])
    except DcronError as exc:
        for row in rows:
            failed(
                f"dynamic task {row}: not written to the registry yet ({exc}); "
                "the next reconcile (dcron_sync, or a beat instance) will write it"
            )
        return
    items: list[BatchItem] = []
    alone: list[DynamicTask] = []
    for row in rows:
        try:
            spec = spec_for(row)
        except ValidationError as exc:
            failed(f"dynamic task {row}: not written to the registry: {exc.messages}")
            continue
        existing = snap.entries.get(row.name)
        if existing is not None and existing.source != SOURCE:
            failed(f"dynamic task {row}: not written: a {existing.source} entry has that name")
        elif existing is not None and same(existing, spec):
            continue
        elif existing is None and row.name in snap.tombstones:
            alone.append(row)  # push() writes over the tombstone, as for one row
        else:
            items.append(BatchItem(row, spec, existing is not None))
    try:
        outcome = write_batch(tasks, items, chunk=chunk)
    except DcronError as exc:
        for row in (*(item.row for item in items), *alone):
            failed(
                f"dynamic task {row}: not written to the registry yet ({exc}); "
                "the next reconcile (dcron_sync, or a beat instance) will write it"
            )
        return
    alone.extend(item.row for item, _ in (*outcome.refused, *outcome.invalid))
    for row in alone:
        push(row)  # one at a time: writes over a tombstone, or reports why it cannot
