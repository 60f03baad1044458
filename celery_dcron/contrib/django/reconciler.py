"""Reconcile: bring the registry in line with the :class:`DynamicTask` table.

One process at a time reconciles a namespace: it takes the namespace's reconcile lease in
Redis (``SET NX PX``, renewed while it pages through the rows); another process that
wants to reconcile then skips it (:attr:`ReconcileReport.skipped`): the holder is doing
the work. A reconcile is

* **full**: every row of the namespace is compared with the registry, a page of
  :data:`PAGE_SIZE` rows at a time; missing or different entries are written in batches,
  admin entries whose row is gone are removed, run counts and last runs are copied into
  the rows, and finished one-offs have their after-run action applied to their rows.
  Full when asked (``full=True``: ``dcron_sync --full``, a beat instance's start, Redis
  lost its data), when there is no watermark (the first reconcile, or the data was lost),
  and once every ``dcron_full_reconcile_interval`` seconds;
* **incremental** otherwise: only the rows whose ``updated_at`` is at or after the
  watermark minus :data:`OVERLAP` (saves made by a clock a little behind, or committed a
  little late), and the rows of entries deleted (tombstoned) since the last reconcile
  (finished one-offs), are compared and written. It removes nothing: a delete reaches
  the registry through the ``post_delete`` signal, and the next full reconcile removes
  what one missed.

The watermark (:class:`~celery_dcron.registry.leases.Watermark`) is the latest
``updated_at`` a reconcile read, and when the last reconcile and the last full one
started; it moves only at the end of a reconcile that kept its lease to the end.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from celery_dcron.api import DynamicTasks
from celery_dcron.entries import EntrySpec, EntryState
from celery_dcron.exceptions import (
    ConfigurationError,
    ConflictError,
    DcronError,
    RegistryUnavailableError,
)
from celery_dcron.registry import Snapshot
from celery_dcron.registry.leases import LeaseGrant, LeaseStore, Watermark, holder_id

from . import writes
from .models import AfterRun, DynamicTask
from .rowstate import from_us, mirror_state, now_us, to_us
from .validators import SOURCE, dynamic_tasks, spec_for

__all__ = [
    "LEASE",
    "LEASE_TTL_MS",
    "OVERLAP",
    "PAGE_SIZE",
    "ReconcileReport",
    "reconcile",
]

logger = logging.getLogger(__name__)

#: The name of this app's lease and watermark in each namespace.
LEASE = "django"
#: How long the lease lives without a renewal: several times a page's work (a query of
#: PAGE_SIZE rows, a read and a batched write to Redis); renewed every LEASE_RENEW_S.
LEASE_TTL_MS = 60_000
#: How often a reconcile renews its lease while it pages through the rows.
LEASE_RENEW_S = 10.0
#: Rows per page: one query, one read of the registry and one batched write.
PAGE_SIZE = 1000
#: An incremental reconcile also reads the rows saved this long before its watermark.
OVERLAP = timedelta(seconds=2)

#: after_run values whose finished entry the registry tombstones: the row goes too.
_DELETES_ROW = (AfterRun.DELETE, AfterRun.TOMBSTONE)


@dataclass
class ReconcileReport:
    """What one reconcile did (or, with ``dry_run``, would do)."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rows_deleted: list[str] = field(default_factory=list)
    rows_updated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: namespaces reconciled in full (every row)
    full: list[str] = field(default_factory=list)
    #: namespaces reconciled incrementally (rows changed since the watermark)
    incremental: list[str] = field(default_factory=list)
    #: namespaces left alone because another process holds their reconcile lease:
    #: namespace -> the holder's id (``host:pid:random``)
    skipped: dict[str, str] = field(default_factory=dict)
    #: rows read from the database
    rows_read: int = 0
    #: batched writes sent to the registry (``add_many`` chunks)
    write_batches: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed or self.rows_deleted or self.rows_updated)

    def __str__(self) -> str:
        parts = [
            f"{len(self.written)} written",
            f"{len(self.removed)} removed",
            f"{len(self.rows_updated)} rows updated",
            f"{len(self.rows_deleted)} finished rows deleted",
            f"{self.rows_read} rows read",
            f"{self.write_batches} write batches",
        ]
        if self.errors:
            parts.append(f"{len(self.errors)} errors")
        modes = [f"{label} {', '.join(names)}" for label, names in
                 (("full:", self.full), ("incremental:", self.incremental)) if names]  # fmt: skip
        modes += [f"skipped: {ns} (lease held by {holder})" for ns, holder in self.skipped.items()]
        return ", ".join(parts) + (f" ({'; '.join(modes)})" if modes else "")


def reconcile(
    namespaces: Iterable[str] | None = None,
    *,
    dry_run: bool = False,
    full: bool = False,
    page_size: int = PAGE_SIZE,
    wait_s: float = 0.0,
) -> ReconcileReport:
    """Bring the registry in line with the table; see the module docstring.

    ``namespaces``: registry namespaces to reconcile (default: every namespace a row
    names, and the app's ``dcron_namespace``). ``full``: compare every row, and remove
    the admin entries without a row (default: incremental, unless a full reconcile is
    due). ``page_size``: rows per query and per batched write. ``wait_s``: how long to
    wait for a namespace's lease held by another process before skipping it. ``dry_run``
    reports what would change, changes nothing and takes no lease.
    """
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"reconcile: page_size: {page_size!r} must be a positive integer")
    report = ReconcileReport()
    settings = dynamic_tasks("").settings
    default, interval_s = settings.namespace, settings.full_reconcile_interval_s
    if namespaces is None:
        stored = DynamicTask.objects.order_by().values_list("namespace", flat=True).distinct()
        wanted = {default} | {namespace or default for namespace in stored}
    else:
        wanted = set(namespaces)
    for namespace in sorted(wanted):
        try:
            tasks = dynamic_tasks("" if namespace == default else namespace)
            run = _Pass(namespace, tasks, report, default=default, dry_run=dry_run,
                        page_size=page_size)  # fmt: skip
            run.run(full=full, interval_s=interval_s, wait_s=wait_s)
        except RegistryUnavailableError as exc:
            report.errors.append(f"namespace {namespace!r}: {exc}")
            logger.warning("dcron: reconcile of namespace %r stopped: %s", namespace, exc)
        except _LeaseLost as exc:
            report.errors.append(f"namespace {namespace!r}: {exc}")
            logger.warning("dcron: reconcile of namespace %r stopped: %s", namespace, exc)
        except ConfigurationError as exc:  # a row's namespace that is no valid namespace
            report.errors.append(f"namespace {namespace!r}: {exc}")
            logger.error("dcron: namespace %r not reconciled: %s", namespace, exc)
    return report


class _LeaseLost(DcronError):
    """The reconcile lease expired or was taken over while this reconcile worked."""


@dataclass(slots=True)
class _Writes:
    """What one page of rows asks of the registry and of the table."""

    batch: list[writes.BatchItem] = field(default_factory=list)
    forced: list[tuple[EntrySpec, str]] = field(default_factory=list)
    mirrored: dict[tuple[str, ...], list[DynamicTask]] = field(
        default_factory=lambda: defaultdict(list)
    )
    finished: list[DynamicTask] = field(default_factory=list)


class _Pass:
    """One reconcile of one namespace."""

    def __init__(
        self,
        namespace: str,
        tasks: DynamicTasks,
        report: ReconcileReport,
        *,
        default: str,
        dry_run: bool,
        page_size: int,
    ) -> None:
        self.namespace = namespace
        self.tasks = tasks
        self.report = report
        self.dry_run = dry_run
        self.page_size = page_size
        self.leases = LeaseStore(tasks.registry.transport)
        self.holder = holder_id()
        names = [namespace, ""] if namespace == default else [namespace]
        self.rows: QuerySet[DynamicTask] = DynamicTask.objects.filter(namespace__in=names)
        #: names of the rows read (a full reconcile removes the entries of the others)
        self.seen: set[str] = set()
        #: the latest updated_at read (µs since the epoch)
        self.latest_us: int | None = None
        self._renewed = 0.0

    # -- the lease and the watermark ------------------------------------------------------

    def run(self, *, full: bool, interval_s: float, wait_s: float) -> None:
        if self.dry_run:
            self._run(full=full, interval_s=interval_s, now_ms=self.tasks.registry.server_ms())
            return
        grant = self._acquire(wait_s)
        if not grant.acquired:
            self.report.skipped[self.namespace] = grant.holder
            if full:  # whoever reconciles next does it in full
                self.leases.want_full(LEASE)
            logger.info(
                "dcron: reconcile of namespace %r skipped: another process holds its lease "
                "(%s, %d ms left)%s", self.namespace, grant.holder, grant.ttl_ms,
                "; the next reconcile will be a full one" if full else "",
            )  # fmt: skip
            return
        try:
            self._run(full=full, interval_s=interval_s, now_ms=grant.server_ms)
        finally:
            with contextlib.suppress(RegistryUnavailableError):  # else it expires
                self.leases.release(LEASE, self.holder)

    def _acquire(self, wait_s: float) -> LeaseGrant:
        deadline = time.monotonic() + wait_s
        while True:
            grant = self.leases.acquire(LEASE, self.holder, LEASE_TTL_MS)
            left = deadline - time.monotonic()
            if grant.acquired or left <= 0:
                self._renewed = time.monotonic()
                return grant
            time.sleep(min(0.2, left))

    def _renew(self) -> None:
        """Renew the lease when it is due; raise _LeaseLost when it is not ours any more."""
        if self.dry_run or time.monotonic() - self._renewed < LEASE_RENEW_S:
            return
        if not self.leases.renew(LEASE, self.holder, LEASE_TTL_MS):
            raise _LeaseLost(
                f"lost the reconcile lease (expired, or Redis lost its data) after "
                f"{self.report.rows_read} rows; the next reconcile starts over"
            )
        self._renewed = time.monotonic()

    def _run(self, *, full: bool, interval_s: float, now_ms: int) -> None:
        started_us = now_us()
        mark = self.leases.watermark(LEASE)
        resume = None if full else _resume_from(mark, now_ms=now_ms, interval_s=interval_s)
        incremental = resume is not None
        before = _counts(self.report)
        if resume is not None:
            self._incremental(*resume)
            self.report.incremental.append(self.namespace)
        else:
            self._full()
            self.report.full.append(self.namespace)
        done = {k: v - before[k] for k, v in _counts(self.report).items()}
        level = logging.INFO if any(done[k] for k in _CHANGES) else logging.DEBUG
        logger.log(
            level, "dcron: reconciled namespace %r with the database (%s): %s", self.namespace,
            "incremental" if incremental else "full",
            ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in done.items()),
        )  # fmt: skip
        if self.dry_run:
            return
        latest = max((mark.mark or 0) if mark is not None else 0, self.latest_us or 0)
        if not self.leases.advance(
            LEASE, self.holder, mark=min(latest, started_us), pass_ms=now_ms,
            full_ms=None if incremental else now_ms,
        ):  # fmt: skip
            logger.warning(
                "dcron: reconcile of namespace %r lost its lease before it could store its "
                "watermark; the next reconcile reads the same rows again", self.namespace,
            )  # fmt: skip

    # -- the two kinds ---------------------------------------------------------------

    def _full(self) -> None:
        snap = self.tasks.registry.snapshot()  # one round trip for the whole namespace
        for page in self._pages(self.rows):
            self._apply(page, snap)
        self._remove_orphans(snap)

    def _incremental(self, mark_us: int, pass_ms: int) -> None:
        since_ms = pass_ms - OVERLAP // timedelta(milliseconds=1)
        finished = sorted(n for n, ms in self.tasks.deleted().items() if ms >= since_ms)
        for start in range(0, len(finished), self.page_size):
            names = finished[start : start + self.page_size]
            rows = list(self.rows.filter(name__in=names, after_run__in=_DELETES_ROW))
            if rows:
                self._apply(rows, self.tasks.registry.snapshot([row.name for row in rows]))
        since = from_us(mark_us) - OVERLAP
        for page in self._pages(self.rows.filter(updated_at__gte=since)):
            self._apply(page, self.tasks.registry.snapshot([row.name for row in page]))

    def _pages(self, rows: QuerySet[DynamicTask]) -> Iterator[list[DynamicTask]]:
        """The rows, ``page_size`` at a time, by primary key (a page is read after the
        previous one was applied, so a row deleted meanwhile is not read)."""
        last: Any = None
        while True:
            query = rows if last is None else rows.filter(pk__gt=last)
            page = list(query.order_by("pk")[: self.page_size])
            if not page:
                return
            yield page
            if len(page) < self.page_size:
                return
            last = page[-1].pk

    # -- one page --------------------------------------------------------------------

    def _apply(self, rows: list[DynamicTask], snap: Snapshot) -> None:
        self._renew()
        self.report.rows_read += len(rows)
        todo = _Writes()
        for task in rows:
            self._row(task, snap, todo)
        if self.dry_run:
            return
        for fields, tasks in todo.mirrored.items():
            DynamicTask.objects.bulk_update(tasks, fields, batch_size=self.page_size)
        if todo.finished:
            DynamicTask.objects.filter(pk__in=[task.pk for task in todo.finished]).delete()
            for task in todo.finished:
                if task.after_run == AfterRun.DELETE:
                    self.tasks.reuse_deleted(task.name)
        for spec, label in todo.forced:
            try:
                writes.write(self.tasks, spec, expected_version=None, force=True)
            except ConflictError:
                self.report.written.remove(label)
        self._write_batch(todo)

    def _row(self, task: DynamicTask, snap: Snapshot, todo: _Writes) -> None:
        """Decide what ``task`` needs (in ``todo``); apply nothing yet."""
        self.seen.add(task.name)
        updated_us = to_us(task.updated_at)
        if self.latest_us is None or updated_us > self.latest_us:
            self.latest_us = updated_us
        label = f"{self.namespace}/{task.name}"
        existing = snap.entries.get(task.name)
        state = snap.states.get(task.name) or EntryState()
        if existing is not None and existing.source != SOURCE:
            self.report.errors.append(f"{label}: a {existing.source} entry has that name")
            logger.error(
                "dcron: dynamic task %s not written: a %s entry has that name",
                label, existing.source,
            )  # fmt: skip
            return
        # a definition that does not parse is there all the same: replaced, not created
        exists = existing is not None or task.name in snap.bad
        tombstoned = not exists and task.name in snap.tombstones
        if tombstoned and task.after_run in _DELETES_ROW:
            # Its last run deleted it: do the same to the row.
            self.report.rows_deleted.append(label)
            todo.finished.append(task)
            return
        if existing is not None:
            fields = mirror_state(task, existing, state, apply=not self.dry_run)
            if fields:
                self.report.rows_updated.append(label)
                todo.mirrored[fields].append(task)
        try:
            spec = spec_for(task)
        except ValidationError as exc:
            self.report.errors.append(f"{label}: {'; '.join(exc.messages)}")
            logger.error("dcron: dynamic task %s is invalid, not written: %s", label, exc.messages)
            return
        if existing is not None and writes.same(existing, spec):
            return
        if existing is not None:
            logger.warning(
                "dcron: dynamic task %s differs in the registry; writing the database's "
                "version back", label,
            )  # fmt: skip
        self.report.written.append(label)
        if tombstoned:
            todo.forced.append((spec, label))
        else:
            todo.batch.append(writes.BatchItem(task, spec, exists))

    def _write_batch(self, todo: _Writes) -> None:
        if not todo.batch:
            return
        outcome = writes.write_batch(self.tasks, todo.batch, chunk=self.page_size)
        self.report.write_batches += outcome.chunks
        dropped: set[str] = set()
        for item, problem in outcome.refused:
            # Written (or deleted, or made static) by someone else since it was read:
            # theirs is newer than ours; the next reconcile checks again.
            dropped.add(self._label(item))
            logger.info("dcron: dynamic task %s not written: %s", self._label(item),
                        problem.message)  # fmt: skip
        for item, problem in outcome.invalid:
            dropped.add(self._label(item))
            self.report.errors.append(f"{self._label(item)}: {problem.message}")
            logger.error("dcron: dynamic task %s not written: %s", self._label(item),
                         problem.message)  # fmt: skip
        if dropped:
            self.report.written[:] = [w for w in self.report.written if w not in dropped]
        self._recheck([item for item in todo.batch if self._label(item) not in dropped])

    def _label(self, item: writes.BatchItem) -> str:
        return f"{self.namespace}/{item.row.name}"

    def _recheck(self, items: list[writes.BatchItem]) -> None:
        """Rows saved or deleted while their entry was being written: a save's push (or a
        delete's removal) that reached Redis before this write was undone by it; do it
        again."""
        read = {item.row.pk: item.row for item in items}
        now = dict(DynamicTask.objects.filter(pk__in=list(read)).values_list("pk", "updated_at"))
        for pk, row in read.items():
            if pk not in now:
                writes.remove(row.namespace, row.name)
            elif now[pk] != row.updated_at:
                fresh = DynamicTask.objects.filter(pk=pk).first()
                if fresh is not None:
                    writes.push(fresh)

    def _remove_orphans(self, snap: Snapshot) -> None:
        """Remove the admin entries whose row is gone (a delete that did not reach Redis)."""
        for name, spec in snap.entries.items():
            if spec.source != SOURCE or name in self.seen:
                continue
            label = f"{self.namespace}/{name}"
            self.report.removed.append(label)
            if self.dry_run:
                continue
            self._renew()
            try:
                writes.discard(self.tasks, spec)
            except ConflictError:
                self.report.removed.remove(label)


def _resume_from(
    mark: Watermark | None, *, now_ms: int, interval_s: float
) -> tuple[int, int] | None:
    """``(mark_us, pass_ms)`` of the watermark an incremental reconcile continues from, or
    None when the reconcile must be full: no watermark, a full one asked for, or the last
    full one started ``interval_s`` or more ago."""
    if mark is None or mark.mark is None or mark.pass_ms is None or mark.full_ms is None:
        return None
    if mark.full_wanted or now_ms - mark.full_ms >= interval_s * 1000:
        return None
    return mark.mark, mark.pass_ms


_CHANGES = ("written", "removed", "rows_updated", "rows_deleted")


def _counts(report: ReconcileReport) -> dict[str, int]:
    counts = {name: len(getattr(report, name)) for name in _CHANGES}
    counts.update(rows_read=report.rows_read, write_batches=report.write_batches)
    return counts
