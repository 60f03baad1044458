"""Many dynamic entries at once: :meth:`DynamicTasks.add_many`, and the JSON lines of
``celery dcron export`` / ``celery dcron import``.

``add_many`` validates every entry first, with the rules of
:meth:`~celery_dcron.api.DynamicTasks.add`, and writes nothing if one is invalid
(:class:`~celery_dcron.exceptions.BulkInvalidError` lists them all), unless told to skip
them. Then it writes in chunks, one pipelined round trip each
(:meth:`~celery_dcron.interfaces.Registry.put_entries`), two chunks under way at once
(while Redis runs one, the next is made ready and sent): each entry is written on its
own, as ``add`` writes it (version 1, anchored once, tombstoned and static names
refused), so an entry refused at that point (a name taken since) is reported in
:class:`BulkResult` and the others are written. With ``skip_invalid`` no entry waits for
the others' validation: each chunk is written once validated (the first once the second
is), while Python validates the next ones (:func:`_add_streaming`).

An entry is given as one of:

- an :class:`~celery_dcron.entries.EntrySpec` (checked as :meth:`DynamicTasks.put` does);
- a mapping of ``add``'s fields with its ``name`` (and ``task``):
  ``{"name": "report", "task": "proj.report", "cron": "0 7 * * *"}``;
- a mapping as ``export`` writes it: the stored form, whose ``schedule`` is an object
  (``{"kind": "cron", "expr": ...}``); its ``version`` is ignored.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from kombu.utils import json as kjson

from .entries import EntrySpec
from .enums import EntrySource
from .exceptions import BulkInvalidError, DcronError, InvalidEntryError
from .ticks import has_first_tick_bound

if TYPE_CHECKING:
    from .api import DynamicTasks

__all__ = ["BulkResult", "EntryProblem", "add_many", "entry_line", "parse_line"]

#: How many problems the message of a BulkInvalidError quotes.
_QUOTED = 5
#: Batches written at once (see :func:`_write`), after all are validated: Redis runs one
#: while the next one is sent.
_IN_FLIGHT = 2
#: Batches written at once while the next ones are validated (:func:`_add_streaming`):
#: more, as a thread whose reply came back waits for the validating thread to let go of
#: the GIL (up to ``sys.getswitchinterval()``, 5 ms), about a batch's time in Redis;
#: with six under way Redis still has work queued meanwhile (2, 4, 6 and 8 measured:
#: 46,000, 58,000, 63,000 and 62,000 entries/s; docs/benchmarks.rst).
_STREAM_IN_FLIGHT = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryProblem:
    """One entry that was not written: why, and where it was in the input."""

    #: position in the entries given (0 for the first)
    index: int
    #: the entry's name, when it has a readable one
    name: str | None
    #: the field at fault (``"name"`` for a name already taken); None: not one field
    field: str | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkResult:
    """What :meth:`DynamicTasks.add_many` did."""

    #: entries given
    total: int
    #: entries written as new (version 1)
    created: int = 0
    #: existing entries overwritten (``replace=True``)
    replaced: int = 0
    #: valid entries the registry refused (name taken, tombstoned, static), not written
    refused: tuple[EntryProblem, ...] = ()
    #: invalid entries, skipped (``skip_invalid=True``)
    invalid: tuple[EntryProblem, ...] = ()
    #: validated only (``dry_run=True``): nothing written
    dry_run: bool = False

    @property
    def written(self) -> int:
        return self.created + self.replaced

    @property
    def ok(self) -> bool:
        """Every entry was valid, and written (or, in a dry run, would be tried)."""
        return not self.refused and not self.invalid


def add_many(
    tasks: DynamicTasks,
    entries: Iterable[Mapping[str, Any] | EntrySpec],
    *,
    replace: bool = False,
    chunk: int = 1000,
    skip_invalid: bool = False,
    dry_run: bool = False,
) -> BulkResult:
    """See :meth:`DynamicTasks.add_many`."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InvalidEntryError(f"add_many: chunk: {chunk!r}: give a positive integer")
    with _collector_paused():
        return _add_many(
            tasks, entries, replace=replace, chunk=chunk, skip_invalid=skip_invalid,
            dry_run=dry_run,
        )  # fmt: skip


def _add_many(
    tasks: DynamicTasks,
    entries: Iterable[Mapping[str, Any] | EntrySpec],
    *,
    replace: bool,
    chunk: int,
    skip_invalid: bool,
    dry_run: bool,
) -> BulkResult:
    now = _ServerTime(tasks)
    if skip_invalid and not dry_run:
        return _add_streaming(tasks, entries, replace=replace, chunk=chunk, now=now)
    specs, invalid = validate(tasks, entries, now=now)
    if invalid and not skip_invalid:
        raise _invalid_error(invalid, len(specs) + len(invalid))
    total = len(specs) + len(invalid)
    if dry_run:
        return BulkResult(total=total, invalid=tuple(invalid), dry_run=True)
    batches = [specs[i : i + chunk] for i in range(0, len(specs), chunk)]
    # the server's time before the writes, read once (with a one-off's validation, if
    # any): the due index's first tick of each new cron or one-off entry counts from it;
    # all chunks share it, so that each schedule's first tick is computed once
    # (registry/entries.py: _bound), not once per chunk.
    timed = any(has_first_tick_bound(s.schedule) for _, s in specs)
    since = now() if timed else None
    written = _write(
        tasks, ((batch, since) for batch in batches), replace=replace, in_flight=_IN_FLIGHT
    )
    return _result(total, written, invalid)


def _add_streaming(
    tasks: DynamicTasks,
    entries: Iterable[Mapping[str, Any] | EntrySpec],
    *,
    replace: bool,
    chunk: int,
    now: _ServerTime,
) -> BulkResult:
    """``add_many`` with ``skip_invalid``: no entry waits for the others' validation, so
    each chunk is written once it is validated (the first once the second is), while the
    next ones are (Python checks them while Redis writes: the two overlap, where without
    ``skip_invalid`` they follow each other). As in :func:`_add_many`, the server's time
    is read once, when a chunk has a cron or one-off entry, and all chunks' first tick
    bounds count from it."""
    check = _Checker(tasks, now)

    def batches() -> Iterator[tuple[list[tuple[int, EntrySpec]], int | None]]:
        valid = check.valid(entries)
        for batch in iter(lambda: list(islice(valid, chunk)), []):
            timed = any(has_first_tick_bound(s.schedule) for _, s in batch)
            yield batch, now() if timed else None

    written = _write(tasks, batches(), replace=replace, in_flight=_STREAM_IN_FLIGHT)
    return _result(check.total, written, check.problems)


def _result(
    total: int,
    written: list[tuple[list[tuple[int, EntrySpec]], list[EntrySpec | DcronError]]],
    invalid: list[EntryProblem],
) -> BulkResult:
    """The counts of what :func:`_write` wrote, and the problems."""
    created = replaced = 0
    refused: list[EntryProblem] = []
    for batch, stored in written:
        for (index, spec), result in zip(batch, stored, strict=True):
            if isinstance(result, EntrySpec):
                if result.version == 1:
                    created += 1
                else:
                    replaced += 1
            else:
                refused.append(_problem(index, spec.name, result, default_field="name"))
    return BulkResult(
        total=total, created=created, replaced=replaced, refused=tuple(refused),
        invalid=tuple(invalid),
    )  # fmt: skip


def _write(
    tasks: DynamicTasks,
    batches: Iterable[tuple[list[tuple[int, EntrySpec]], int | None]],
    *,
    replace: bool,
    in_flight: int,
) -> list[tuple[list[tuple[int, EntrySpec]], list[EntrySpec | DcronError]]]:
    """Each batch (with the server time its first tick bounds count from), and what
    :meth:`~celery_dcron.interfaces.Registry.put_entries` returned for it.

    ``in_flight`` batches are written at once, each in its own thread (its own
    connection): while Redis runs the scripts of one, Python gets the next one ready
    (``batches`` may make it then: :func:`_add_streaming`) and sends it, so that neither
    waits for the other. The first error a batch raised (in their order) is raised once
    the batches under way are done; the batches after it are not written (nor made; the
    ones beside it may have been written, as the ones before it were).
    """

    def put(batch: list[tuple[int, EntrySpec]], since: int | None) -> list[EntrySpec | DcronError]:
        specs = [spec for _, spec in batch]
        return tasks.registry.put_entries(specs, replace=replace, since_ms=since)

    it = iter(batches)
    head = list(islice(it, 2))
    if len(head) < 2:  # one batch alone is written in this thread
        return [(batch, put(batch, since)) for batch, since in head]
    out: list[tuple[list[tuple[int, EntrySpec]], list[EntrySpec | DcronError]]] = []
    with ThreadPoolExecutor(in_flight, thread_name_prefix="dcron-add-many") as pool:
        under_way: deque[tuple[list[tuple[int, EntrySpec]], Future[list[EntrySpec | DcronError]]]]
        under_way = deque()
        try:
            for batch, since in chain(head, it):
                if len(under_way) == in_flight:
                    done, future = under_way.popleft()
                    out.append((done, future.result()))
                under_way.append((batch, pool.submit(put, batch, since)))
            while under_way:
                done, future = under_way.popleft()
                out.append((done, future.result()))
        finally:
            for _, future in under_way:
                future.cancel()  # not started: not written
    return out


def validate(
    tasks: DynamicTasks,
    entries: Iterable[Mapping[str, Any] | EntrySpec],
    *,
    now: Callable[[], int] | None = None,
) -> tuple[list[tuple[int, EntrySpec]], list[EntryProblem]]:
    """``(index, entry)`` of each valid entry, and a problem for each invalid one;
    ``now``: the server's time, when a one-off needs it (read once: :class:`_ServerTime`)."""
    check = _Checker(tasks, now or _ServerTime(tasks))
    return list(check.valid(entries)), check.problems


class _Checker:
    """Validates the entries of one ``add_many``: yields each valid one, and keeps a
    problem for each invalid one (or a name given again)."""

    def __init__(self, tasks: DynamicTasks, now: Callable[[], int]) -> None:
        self._tasks = tasks
        self._now = now
        self._zone = tasks._app_zone()  # the zone of a cron without tz=: read once
        #: entries seen (valid or not)
        self.total = 0
        self.problems: list[EntryProblem] = []

    def valid(
        self, entries: Iterable[Mapping[str, Any] | EntrySpec]
    ) -> Iterator[tuple[int, EntrySpec]]:
        """``(index, entry)`` of each valid entry of ``entries``, in order."""
        tasks, now, zone, problems = self._tasks, self._now, self._zone, self.problems
        first: dict[str, int] = {}
        for index, item in enumerate(entries):
            self.total = index + 1
            try:
                spec = _spec_of(tasks, item, now, zone)
            except InvalidEntryError as exc:
                problems.append(_problem(index, _name_of(item), exc))
                continue
            if spec.name in first:
                problems.append(EntryProblem(
                    index=index, name=spec.name, field="name",
                    message=f"entry {spec.name!r}: name: given twice (first at "
                    f"#{first[spec.name]}); keep one",
                ))  # fmt: skip
                continue
            first[spec.name] = index
            yield index, spec


def entry_line(spec: EntrySpec) -> str:
    """One line of ``export``: the entry as stored, without its version (JSON)."""
    data = spec.to_json()
    data.pop("version", None)
    return str(kjson.dumps(data, sort_keys=True))


def parse_line(text: str) -> Mapping[str, Any]:
    """An entry of ``import`` (a line of ``export``, or ``add``'s fields with a name);
    raises InvalidEntryError when the line is not a JSON object."""
    try:
        data = kjson.loads(text)
    except ValueError as exc:
        raise InvalidEntryError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEntryError(f"must be a JSON object, got {type(data).__name__}")
    return data


# -- inside -------------------------------------------------------------------------


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (unless it is off already): a bulk write
    makes several objects per entry, and keeps the entries until written, so that the
    collector would go over them again and again (a fifth of the time). They hold no
    reference cycles; what the caller's own code makes meanwhile is collected after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _ServerTime:
    """The Redis server's time, read once, when the first one-off ``at`` needs it."""

    def __init__(self, tasks: DynamicTasks) -> None:
        self._read: Callable[[], int] = tasks.registry.server_ms
        self._ms: int | None = None

    def __call__(self) -> int:
        if self._ms is None:
            self._ms = self._read()
        return self._ms


def _name_of(item: object) -> str | None:
    name = item.name if isinstance(item, EntrySpec) else None
    if isinstance(item, Mapping):
        name = item.get("name")
    return name if isinstance(name, str) else None


def _spec_of(tasks: DynamicTasks, item: object, now_ms: Callable[[], int], zone: str) -> EntrySpec:
    """The entry ``item`` gives, validated; made at version 1, as a new entry is stored
    (so that writing it uses the JSON text its validation made)."""
    if type(item) is not dict:  # (a dict is the usual entry: no ABC check)
        if isinstance(item, EntrySpec):
            return tasks.check(item)
        if not isinstance(item, Mapping):
            raise InvalidEntryError(
                f"{item!r} is not an entry: give a mapping of add()'s fields with a name, or "
                "an EntrySpec"
            )
    schedule = item.get("schedule")
    if schedule is not None and isinstance(schedule, Mapping):
        return tasks.check(_stored(item))
    if "name" not in item:
        raise InvalidEntryError("name: missing; give each entry a name", field="name")
    changes = dict(item)  # add()'s fields and the task
    name = changes.pop("name")
    changes.setdefault("task", None)
    return tasks._new(name, changes, now_ms=now_ms, app_zone=zone, version=1)


def _stored(data: Mapping[str, Any]) -> EntrySpec:
    """The entry of an ``export`` line (its version ignored: the registry numbers them;
    version 1, as a new entry is stored)."""
    fields = {"source": EntrySource.DYNAMIC.value, **data}
    fields["version"] = 1
    for key in ("name", "task"):
        if key not in fields:
            raise InvalidEntryError(f"{key}: missing; give each entry a {key}", field=key)
    try:
        return EntrySpec.from_json(fields)
    except InvalidEntryError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        name = fields.get("name")
        raise InvalidEntryError(f"entry {name!r}: not an exported entry: {exc!r}") from None


def _problem(
    index: int, name: str | None, exc: DcronError, *, default_field: str | None = None
) -> EntryProblem:
    field = getattr(exc, "field", None) or default_field
    return EntryProblem(index=index, name=name, field=field, message=str(exc))


def _invalid_error(problems: list[EntryProblem], total: int) -> BulkInvalidError:
    quoted = "; ".join(f"#{p.index}: {p.message}" for p in problems[:_QUOTED])
    more = f"; and {len(problems) - _QUOTED} more" if len(problems) > _QUOTED else ""
    return BulkInvalidError(
        f"add_many: {len(problems)} of {total} entries are invalid, nothing written "
        f"(fix them, or pass skip_invalid=True): {quoted}{more}",
        problems=problems,
    )
