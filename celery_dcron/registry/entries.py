"""Entry definitions in Redis: static sync, dynamic writes (compare-and-set on the
version), removal with tombstones, anchors, reset and clean-up.

Every write bumps the entries version and publishes ``"entries"``, so owners reload.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from ..entries import EntrySpec
from ..entrytext import stored_version, version_tail
from ..exceptions import (
    ConflictError,
    DcronError,
    EntryNotFoundError,
    InvalidEntryError,
    VersionConflictError,
)
from ..schedules import IntervalSchedule, Schedule
from ..ticks import first_tick_bound, has_first_tick_bound, interval_phase_ms
from . import scripts
from .codec import StaticSyncResult, decode_entries, decode_entry, time_ms
from .transport import Store

__all__ = ["EntryStore"]

#: Attempts of a write that is retried on a concurrent change.
_ATTEMPTS = 20
#: PUT_ENTRIES's expected version of an entry created or overwritten, whatever is stored;
#: the entry's JSON then ends so (its version 1, the last key), for the script to number.
_ANY = -2
_AT_ONE = version_tail(1)


class EntryStore(Store):
    """The ``entries``, ``static``, ``tombstones`` and ``anchor`` keys (and, on removal,
    an entry's run state)."""

    def sync_static(self, specs: Sequence[EntrySpec], *, final: bool = True) -> StaticSyncResult:
        """Write static entries of one ``beat_schedule`` (all of it, or a page) in one
        step; ``final``: then remove the static entries ``specs`` does not list."""
        args: list[Any] = [self.keys.events, len(specs)]
        for spec in specs:
            args.extend((spec.name, spec.dumps(), *self.grid(spec)))
        args.append("1" if final else "0")
        raw = self.transport.call(scripts.SYNC_STATIC, args)
        skipped = {str(raw[i]): str(raw[i + 1]) for i in range(1, len(raw), 2)}
        return StaticSyncResult(changed=int(raw[0]), skipped=skipped)

    def scan_static(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page of the static entries' names (``HSCAN``; cursor 0 starts, 0 back
        means done; a name may come twice)."""
        t = self.transport
        cursor, page = t.run(lambda: t.client.hscan(self.keys.static, cursor, count=count))
        return int(cursor), list(page)

    def drop_static(self, names: Sequence[str]) -> int:
        """Remove each of ``names`` that is still a static entry; how many were."""
        if not names:
            return 0
        return int(self.transport.call(scripts.DROP_STATIC, [self.keys.events, *names]))

    def restore_anchors(self, anchors: Mapping[str, int], *, reset_ms: int) -> None:
        """After Redis lost its data: put back the anchors (HSETNX: an anchor is set once)
        and record when the data was rebuilt (the first call wins), so that instances that
        start later know which entries lost their last tick with the data."""
        pipe = self.transport.pipeline()
        pipe.hsetnx(self.keys.meta, "reset", reset_ms)
        for name, anchor_ms in anchors.items():
            pipe.hsetnx(self.keys.anchor, name, anchor_ms)
        self.transport.execute(pipe)

    def entries(self) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        """Every entry that parses, and ``name -> error`` for those that do not."""
        t = self.transport
        return decode_entries(t.run(lambda: t.client.hgetall(self.keys.entries)))

    def get_entry(self, name: str) -> EntrySpec | None:
        """The entry ``name``, or None. A malformed stored entry raises InvalidEntryError."""
        t = self.transport
        text = t.run(lambda: t.client.hget(self.keys.entries, name))
        if text is None:
            return None
        try:
            return decode_entry(text)
        except InvalidEntryError as exc:
            raise InvalidEntryError(f"entry {name!r}: malformed in the registry: {exc}") from None

    def get_entry_version(self, name: str) -> int:
        """The stored version of ``name``; -1 when there is no such entry."""
        spec = self.get_entry(name)
        return -1 if spec is None else spec.version

    def put_entry(
        self, spec: EntrySpec, *, expected_version: int | None, force: bool = False
    ) -> EntrySpec:
        """Write ``spec`` with compare-and-set on its version; returns it as stored.

        ``expected_version=None`` creates (refused when the name exists); an int updates
        the entry only if its stored version is still that. ``force`` writes over a
        tombstone or a static entry, and with ``expected_version=None`` over anything.
        """
        for _ in range(_ATTEMPTS):
            expected = expected_version
            if force and expected is None:
                current = self.get_entry_version(spec.name)
                expected = None if current < 0 else current
            new = spec.with_changes(version=(expected or 0) + 1)
            status, version = self.transport.call(
                scripts.PUT_ENTRY,
                [self.keys.events, spec.name, new.dumps(), "" if expected is None else expected,
                 "1" if force else "0", *self.grid(spec)],
            )  # fmt: skip
            status, version = str(status), int(version)
            if status == "ok":
                return new
            if status in ("exists", "conflict") and force and expected_version is None:
                continue  # someone wrote in between: read the new version and force again
            raise _write_error(spec.name, status, version, expected)
        raise ConflictError(f"entry {spec.name!r}: too many concurrent writes; try again")

    def put_entries(
        self, specs: Sequence[EntrySpec], *, replace: bool = False, since_ms: int | None = None
    ) -> list[EntrySpec | DcronError]:
        """Create (or with ``replace``, create or overwrite) each of ``specs`` as
        :meth:`put_entry` does, each on its own: PUT_ENTRIES calls of up to
        ``PUT_ENTRIES_MAX`` entries (fewer when they are large), all pipelined in one
        round trip. Tombstoned and static names are refused. Returns, in order, each entry
        as stored or the error that refused it.

        ``replace`` sends each entry at version 1 and lets the script number an overwrite
        (the stored version + 1, in the text's last key: :data:`scripts.PUT_ENTRIES`), so
        that it takes the same one round trip, and no concurrent write can make it retry.
        An entry whose JSON does not end in its version (a subclass's own ``dumps``)
        cannot be renumbered so: then the versions are read first, and the writes
        compare-and-set on them (:meth:`_put_read`); so is an entry whose next version
        would take more than the 15 digits a Lua number holds exactly (only a raw write
        makes such a version).
        """
        results: list[EntrySpec | DcronError | None] = [None] * len(specs)
        firsts = _FirstTicks(self.transport.server_ms, since_ms)
        rows: list[tuple[str, str, int, int, int, int]] = []
        written: list[int] = []  # the index in specs of each row
        expected = _ANY if replace else -1
        for i, spec in enumerate(specs):
            new = spec.at_version(1)
            try:
                text = new.dumps()
            except InvalidEntryError as exc:
                results[i] = exc
                continue
            if replace and not text.endswith(_AT_ONE):
                return self._put_read(specs, firsts)
            rows.append((spec.name, text, expected, *self.grid(spec), firsts.bound(spec)))
            written.append(i)
            results[i] = new  # unless refused or renumbered below
        again: list[int] = []  # too far numbered for the script
        for row, status, version in self._put_rows(rows, firsts.since):
            i = written[row]
            if status == "ok":
                results[i] = cast(EntrySpec, results[i]).at_version(version)  # (its text too)
            elif status == "conflict":
                again.append(i)
            else:
                results[i] = _write_error(specs[i].name, status, version, None)
        if again:
            redone = self._put_read([specs[i] for i in again], firsts)
            for i, result in zip(again, redone, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _put_read(
        self, specs: Sequence[EntrySpec], firsts: _FirstTicks
    ) -> list[EntrySpec | DcronError]:
        """:meth:`put_entries` with ``replace``, in two round trips: the stored versions
        read, then each write compare-and-set on the one read (read again and retried
        when written in between)."""
        results: list[EntrySpec | DcronError | None] = [None] * len(specs)
        todo = list(range(len(specs)))
        for _ in range(_ATTEMPTS):
            expected: dict[int, int | None] = dict.fromkeys(todo)
            todo = self._read_versions(specs, todo, expected, results, firsts)
            written: list[int] = []  # the index in specs of each row
            rows: list[tuple[str, str, int, int, int, int]] = []
            for i in todo:
                spec, exp = specs[i], expected[i]
                new = spec.at_version((exp or 0) + 1)
                try:
                    text = new.dumps()
                except InvalidEntryError as exc:
                    results[i] = exc
                    continue
                exp_v = -1 if exp is None else exp
                rows.append((spec.name, text, exp_v, *self.grid(spec), firsts.bound(spec)))
                written.append(i)
                results[i] = new  # unless refused below
            todo = []
            for row, status, version in self._put_rows(rows, firsts.since):
                i = written[row]
                if status in ("exists", "conflict", "missing"):
                    todo.append(i)  # written in between: read it again
                else:
                    results[i] = _write_error(specs[i].name, status, version, expected[i])
            if not todo:
                break
        for i in todo:
            results[i] = ConflictError(
                f"entry {specs[i].name!r}: too many concurrent writes; try again"
            )
        return [r for r in results if r is not None]

    def _put_rows(
        self, rows: list[tuple[str, str, int, int, int, int]], since_ms: int | None
    ) -> list[tuple[int, str, int]]:
        """Run PUT_ENTRIES on ``rows`` (name, json, expected version, -1 or ``_ANY``, every_ms,
        phase_ms, first tick bound or 0; the bounds count from ``since_ms``), in calls of
        at most ``PUT_ENTRIES_MAX`` entries and about ``PUT_ENTRIES_MAX_BYTES`` of JSON,
        pipelined in one round trip; returns ``(position in rows, status, version)`` of each
        entry refused (the current version) or overwritten with expected ``_ANY``
        (status ``"ok"``, the version written)."""
        head = [self.keys.events, "" if since_ms is None else since_ms]
        calls: list[list[Any]] = []
        firsts: list[int] = []  # the position in rows of each call's first entry
        meta: list[Any] = []
        texts: list[str] = []
        size = 0
        for at, (name, text, expected, every, phase, first) in enumerate(rows):
            length = len(text) if text.isascii() else len(text.encode())
            if texts and (
                len(texts) >= scripts.PUT_ENTRIES_MAX
                or size + length > scripts.PUT_ENTRIES_MAX_BYTES
            ):
                calls.append([*head, json.dumps(meta, ensure_ascii=False), "".join(texts)])
                meta, texts, size = [], [], 0
            if not texts:
                firsts.append(at)
            meta.extend((name, length, expected, every, phase, first))
            texts.append(text)
            size += length
        if texts:
            calls.append([*head, json.dumps(meta, ensure_ascii=False), "".join(texts)])
        replies = self.transport.call_many(scripts.PUT_ENTRIES, calls) if calls else []
        listed: list[tuple[int, str, int]] = []
        for first, reply in zip(firsts, replies, strict=True):
            for j in range(1, len(reply), 3):  # the entries listed: position, status, version
                at = int(reply[j])
                if at == 0:  # the entries overwritten, "i:version,..."
                    for pair in str(reply[j + 2]).split(","):
                        i, _, version = pair.partition(":")
                        listed.append((first + int(i) - 1, "ok", int(version)))
                    continue
                listed.append((first + at - 1, str(reply[j + 1]), int(reply[j + 2])))
        return listed

    def _read_versions(
        self,
        specs: Sequence[EntrySpec],
        todo: list[int],
        expected: dict[int, int | None],
        results: list[EntrySpec | DcronError | None],
        firsts: _FirstTicks,
    ) -> list[int]:
        """Fill ``expected`` with the stored version of each entry of ``todo`` (None:
        absent); refuse the static names. Returns the indexes still to write. Reads the
        server's time with them if ``firsts`` will need it."""
        names = [specs[i].name for i in todo]
        if not names:
            return []
        pipe = self.transport.pipeline()
        pipe.hmget(self.keys.entries, names)
        pipe.hmget(self.keys.static, names)
        timed = firsts.needs_time(specs[i] for i in todo)
        if timed:  # the TIME script (the namespace's node, on a Redis Cluster); EVAL: the
            # pipeline has no NOSCRIPT retry
            keys = scripts.TIME.bind(self.keys)
            pipe.execute_command("EVAL", scripts.TIME.source, len(keys), *keys)
        stored, static, *now = self.transport.execute(pipe)
        if timed:
            firsts.since = time_ms(*now[0])
        left = []
        for i, text, is_static in zip(todo, stored, static, strict=True):
            if is_static is not None:
                results[i] = _write_error(specs[i].name, "static", _stored_version(text), None)
                continue
            version = _stored_version(text)
            expected[i] = None if version < 0 else version
            left.append(i)
        return left

    def set_enabled(self, name: str, enabled: bool) -> EntrySpec:
        """Enable or disable ``name`` (compare-and-set, retried on a concurrent write)."""
        for _ in range(_ATTEMPTS):
            spec = self.get_entry(name)
            if spec is None:
                raise EntryNotFoundError(f"entry {name!r}: not found")
            if spec.enabled is enabled:
                return spec
            try:
                return self.put_entry(
                    spec.with_changes(enabled=enabled), expected_version=spec.version, force=False
                )
            except VersionConflictError:
                continue  # written in between: read it again
        raise ConflictError(f"entry {name!r}: too many concurrent writes; try again")

    def remove_entry(
        self, name: str, *, tombstone: bool, expected_version: int | None = None
    ) -> bool:
        """Remove the definition and run state; False if there was none.

        With ``tombstone`` the name stays deleted: re-adding it is refused until
        :meth:`reuse_deleted` or a forced write (the tombstone is set even if absent).
        """
        status, version = self.transport.call(
            scripts.REMOVE_ENTRY,
            [self.keys.events, name, "1" if tombstone else "0",
             "" if expected_version is None else expected_version],
        )  # fmt: skip
        if str(status) == "conflict":
            raise _write_error(name, "conflict", int(version), expected_version)
        return str(status) == "ok"

    def cleanup(self, name: str) -> int:
        """Erase every trace of ``name``; returns how many fields were removed."""
        return int(self.transport.call(scripts.CLEANUP, [self.keys.events, name]))

    def reuse_deleted(self, name: str) -> bool:
        """Remove the tombstone of ``name``; False if it had none."""
        t = self.transport
        return bool(t.run(lambda: t.client.hdel(self.keys.tombstones, name)))

    def tombstones(self) -> dict[str, int]:
        """Deleted names and when they were deleted (ms)."""
        t = self.transport
        raw: dict[str, str] = t.run(lambda: t.client.hgetall(self.keys.tombstones))
        return {name: int(ms) for name, ms in raw.items()}

    def static_names(self) -> set[str]:
        t = self.transport
        return set(t.run(lambda: t.client.hkeys(self.keys.static)))

    def reset(self, name: str) -> bool:
        """Start ``name`` afresh (anchor now, no last tick, no runs); False if absent."""
        try:
            spec = self.get_entry(name)
        except InvalidEntryError:
            spec = None  # anchored at now: the engine skips a malformed entry anyway
        grid = self.grid(spec) if spec is not None else (0, 0)
        return bool(self.transport.call(scripts.RESET, [self.keys.events, name, *grid]))

    def grid(self, spec: EntrySpec) -> tuple[int, int]:
        """``(every_ms, phase_ms)`` of an interval entry, ``(0, 0)`` for other schedules."""
        schedule = spec.schedule
        if not isinstance(schedule, IntervalSchedule):
            return (0, 0)
        every = schedule.every_ms
        return (every, interval_phase_ms(self.keys.namespace, spec.name, every))


class _FirstTicks:
    """The due index's time of each new cron or one-off entry of one bulk write: a lower
    bound of its first tick (:func:`~celery_dcron.ticks.first_tick_bound`) from a
    server time read before the write (the caller's, else read once here, before the
    first such entry is written): its anchor, set by the write, is not earlier. One
    computation per distinct schedule and time (:func:`_bound`): a bulk add of cron
    entries shares a few expressions, and croniter takes ~30 µs a step. So their owners
    do not have to compute and write each first tick after the add."""

    def __init__(self, server_ms: Callable[[], int], since_ms: int | None) -> None:
        self._server_ms = server_ms
        #: the server time the bounds count from (None: not read yet)
        self.since = since_ms
        # id(schedule) -> (schedule, bound): validation gives the entries of one cron
        # expression one object, so its id finds it without hashing the dataclass (the
        # schedule is kept with it: its id is not reused while this lives); by value:
        # _bound
        self._by_id: dict[int, tuple[Schedule, int]] = {}

    def needs_time(self, specs: Iterable[EntrySpec]) -> bool:
        """Whether the server's time is still to be read for one of ``specs``."""
        return self.since is None and any(has_first_tick_bound(s.schedule) for s in specs)

    def bound(self, spec: EntrySpec) -> int:
        schedule = spec.schedule
        if not has_first_tick_bound(schedule):
            return 0  # an interval: the script computes it from the anchor it sets
        known = self._by_id.get(id(schedule))
        if known is not None:
            return known[1]
        if self.since is None:
            self.since = self._server_ms()
        bound = _bound(schedule, self.since)
        self._by_id[id(schedule)] = (schedule, bound)
        return bound


@functools.lru_cache(maxsize=4096)
def _bound(schedule: Schedule, since_ms: int) -> int:
    """:func:`~celery_dcron.ticks.first_tick_bound`, remembered: every chunk of one bulk
    write counts from the same time, so that a schedule shared by entries of many chunks
    (``M H * * *`` with 1,440 distinct expressions, say) costs one croniter step per
    write, not one per chunk of 1,000 entries."""
    return first_tick_bound(schedule, since_ms)


def _stored_version(text: str | None) -> int:
    """The version in a stored entry JSON, as the scripts read it (``version_of``): -1
    without an entry; read from the text's end when it ends with it, as each text this
    package writes does (then whatever comes before, even a damaged text); else decoded,
    0 without a version or without JSON."""
    if text is None:
        return -1
    version = stored_version(text)
    if version is not None:
        return version
    try:
        version = json.loads(text).get("version")
        return int(version) if version is not None else 0
    except (ValueError, TypeError, AttributeError):
        return 0


def _write_error(name: str, status: str, version: int, expected: int | None) -> DcronError:
    """The error for a write the script refused with ``status``."""
    if status == "missing":
        return EntryNotFoundError(f"entry {name!r}: not found; add it first")
    if status == "exists":
        return ConflictError(
            f"entry {name!r}: already exists (version {version}); use update() to change it "
            "or force_add() to replace it"
        )
    if status == "conflict":
        return VersionConflictError(
            f"entry {name!r}: version: changed by someone else (now version {version}, you "
            f"had {expected}); read it again and re-apply your change"
        )
    if status == "tombstoned":
        return ConflictError(
            f"entry {name!r}: the name is deleted (tombstoned); use force_add() to overwrite "
            "it or reuse_deleted() to free the name"
        )
    if status == "static":
        return ConflictError(
            f"entry {name!r}: a static entry (beat_schedule) has that name; change it in the "
            "config, or use force_add() to replace it by a dynamic entry"
        )
    return DcronError(f"entry {name!r}: write refused: {status}")
