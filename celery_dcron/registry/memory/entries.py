"""Entries: static sync, writes, removal, tombstones, reset, pause."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ...entries import (
    EntrySpec,
)
from ...exceptions import (
    DcronError,
    EntryNotFoundError,
    InvalidEntryError,
)

# The registry's record types: pure frozen dataclasses (the module that holds them
# imports redis; the memory registry uses nothing else of it).
from ..codec import (
    StaticSyncResult,
    decode_entries,
)

if TYPE_CHECKING:
    pass
from ...schedules import IntervalSchedule
from ...ticks import FOLD_MS, first_tick_bound
from .base import _ENTRIES, _Base, _conflict, _refused, _version_of


class _Entries(_Base):
    # -- entries -------------------------------------------------------------------

    def sync_static(self, specs: Sequence[EntrySpec], *, final: bool = True) -> StaticSyncResult:
        texts = [(spec, spec.dumps()) for spec in specs]
        kept = set()
        with self._op() as now:
            d = self._data
            changed = 0
            skipped: dict[str, str] = {}
            for spec, text in texts:
                name = spec.name
                kept.add(name)
                if name in d.tombstones:
                    skipped[name] = "tombstoned"
                elif name not in d.static and name in d.entries:
                    skipped[name] = "dynamic"
                else:
                    if d.entries.get(name) != text:
                        d.entries[name] = text
                        d.static.add(name)
                        self._feed(name, "put")
                        changed += 1
                    d.anchor.setdefault(name, self._anchor_at(spec, now))
            for name in sorted(d.static - kept if final else ()):
                self._drop_static(name)
                changed += 1
            if changed:
                self._notify(_ENTRIES)
            return StaticSyncResult(changed=changed, skipped=skipped)

    def _drop_static(self, name: str) -> None:
        d = self._data
        d.static.discard(name)
        d.entries.pop(name, None)
        self._feed(name, "del")

    def scan_static(self, cursor: int, count: int) -> tuple[int, list[str]]:
        # every name at once (COUNT is a hint to HSCAN too): an offset into a list that
        # other writers change could skip a name that was there all along
        with self._op():
            return 0, sorted(self._data.static)

    def drop_static(self, names: Sequence[str]) -> int:
        with self._op():
            dropped = [n for n in dict.fromkeys(names) if n in self._data.static]
            for name in dropped:
                self._drop_static(name)
            if dropped:
                self._notify(_ENTRIES)
            return len(dropped)

    def _first_due(
        self, name: str, spec: EntrySpec, text: str, anchored: bool, *, bulk_ms: int | None = None
    ) -> None:
        """As the scripts' ``first_due``: an interval entry anchored by this write, without
        "start_ms" in its text, is due a whole interval after its anchor; in a bulk write
        (``bulk_ms``: its time), a cron or one-off entry anchored by it at its
        :func:`~celery_dcron.ticks.first_tick_bound`."""
        d = self._data
        if not anchored or name in d.last:
            return
        schedule = spec.schedule
        if isinstance(schedule, IntervalSchedule):
            if '"start_ms"' not in text:
                d.due[name] = d.anchor[name] + schedule.every_ms
        elif bulk_ms is not None:
            bound = first_tick_bound(schedule, bulk_ms)
            if bound:
                d.due[name] = bound

    def restore_anchors(self, anchors: Mapping[str, int], *, reset_ms: int) -> None:
        with self._op():
            d = self._data
            if d.reset_ms is None:
                d.reset_ms = reset_ms
            for name, anchor_ms in anchors.items():
                d.anchor.setdefault(name, anchor_ms)

    def entries(self) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        with self._op():
            return decode_entries(self._data.entries)

    def get_entry(self, name: str) -> EntrySpec | None:
        with self._op():
            return self._get(name)

    def _get(self, name: str) -> EntrySpec | None:
        text = self._data.entries.get(name)
        if text is None:
            return None
        try:
            return EntrySpec.loads(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidEntryError(f"entry {name!r}: malformed in the registry: {exc}") from None

    def put_entry(
        self, spec: EntrySpec, *, expected_version: int | None, force: bool = False
    ) -> EntrySpec:
        with self._op() as now:
            d = self._data
            name = spec.name
            current = _version_of(d.entries.get(name))
            expected = expected_version
            if force and expected is None:
                stored = self._get(name)  # InvalidEntryError when malformed, as in Redis
                expected = None if stored is None else stored.version
            new = spec.with_changes(version=(expected or 0) + 1)
            text = new.dumps()
            if not force and name in d.tombstones:
                raise _refused(name, "the name is deleted (tombstoned); use force_add()")
            if expected is None:
                if not force and name in d.static:
                    raise _refused(name, "a static entry (beat_schedule) has that name")
                if current >= 0:
                    raise _refused(name, f"already exists (version {current})")
            elif current < 0:
                raise EntryNotFoundError(f"entry {name!r}: not found; add it first")
            elif expected != current:
                raise _conflict(name, current, expected)
            if force:
                d.tombstones.pop(name, None)
                d.static.discard(name)
            d.entries[name] = text
            anchored = name not in d.anchor
            d.anchor.setdefault(name, self._anchor_at(spec, now))
            self._feed(name, "put")
            self._first_due(name, spec, text, anchored)
            self._notify(_ENTRIES)
            return new

    def put_entries(
        self, specs: Sequence[EntrySpec], *, replace: bool = False, since_ms: int | None = None
    ) -> list[EntrySpec | DcronError]:
        # As the Redis registry: each entry on its own, in order (a name given twice sees
        # the first write), one feed record per entry written, one notification.
        results: list[EntrySpec | DcronError] = []
        with self._op() as now:
            d = self._data
            for spec in specs:
                name = spec.name
                current = _version_of(d.entries.get(name))
                new = spec.with_changes(version=(max(current, 0) if replace else 0) + 1)
                try:
                    text = new.dumps()
                except InvalidEntryError as exc:
                    results.append(exc)
                    continue
                if name in d.tombstones:
                    why = "the name is deleted (tombstoned); use force_add()"
                elif name in d.static:
                    why = "a static entry (beat_schedule) has that name"
                elif current >= 0 and not replace:
                    why = f"already exists (version {current})"
                else:
                    d.entries[name] = text
                    anchored = name not in d.anchor
                    d.anchor.setdefault(name, self._anchor_at(spec, now))
                    self._feed(name, "put")
                    # (a time later than now: the clock stepped back; no bound from it)
                    since = now if since_ms is None else since_ms
                    bulk_ms = None if not 0 <= now - since < FOLD_MS else since
                    self._first_due(name, spec, text, anchored, bulk_ms=bulk_ms)
                    results.append(new)
                    continue
                results.append(_refused(name, why))
            if any(isinstance(r, EntrySpec) for r in results):
                self._notify(_ENTRIES)
        return results

    def remove_entry(
        self, name: str, *, tombstone: bool, expected_version: int | None = None
    ) -> bool:
        with self._op() as now:
            d = self._data
            current = _version_of(d.entries.get(name))
            if expected_version is not None and expected_version != current:
                raise _conflict(name, current, expected_version)
            if tombstone:
                d.tombstones[name] = now
            if current < 0:
                return False
            for table in (d.entries, d.anchor, d.last, d.runs, d.lastnode, d.errors):
                table.pop(name, None)
            d.static.discard(name)
            self._feed(name, "del")
            self._notify(_ENTRIES)
            return True

    def cleanup(self, name: str) -> int:
        with self._op():
            d = self._data
            removed = 0
            tables = (d.entries, d.tombstones, d.anchor, d.last, d.runs, d.lastnode, d.errors)
            for table in tables:
                removed += table.pop(name, None) is not None
            if name in d.static:
                d.static.discard(name)
                removed += 1
            for fields in (d.pending, d.requests):
                for key in [k for k in fields if k[0] == name]:
                    del fields[key]
                    removed += 1
            self._feed(name, "del")
            self._notify(_ENTRIES)
            return removed

    def reuse_deleted(self, name: str) -> bool:
        with self._op():
            return self._data.tombstones.pop(name, None) is not None

    def tombstones(self) -> dict[str, int]:
        with self._op():
            return dict(self._data.tombstones)

    def static_names(self) -> set[str]:
        with self._op():
            return set(self._data.static)

    def reset(self, name: str) -> bool:
        with self._op() as now:
            d = self._data
            if name not in d.entries:
                return False
            try:
                spec = self._get(name)
            except InvalidEntryError:
                spec = None  # anchored at now, as the Redis registry does
            d.anchor[name] = self._anchor_at(spec, now)
            for table in (d.last, d.runs, d.lastnode, d.errors):
                table.pop(name, None)
            self._feed(name, "state")
            self._notify(_ENTRIES)
            return True

    def set_enabled(self, name: str, enabled: bool) -> EntrySpec:
        with self._op():  # one step: no concurrent write can come in between
            spec = self._get(name)
            if spec is None:
                raise EntryNotFoundError(f"entry {name!r}: not found")
            if spec.enabled is enabled:
                return spec
            return self.put_entry(spec.with_changes(enabled=enabled), expected_version=spec.version)

    def set_paused(self, paused: bool) -> None:
        with self._op():
            self._data.paused = paused
            self._feed("", "pause")
            self._notify(_ENTRIES)

    def is_paused(self) -> bool:
        with self._op():
            return self._data.paused
