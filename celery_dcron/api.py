"""Dynamic entries: add, change, pause and remove scheduled entries at run time.

One entry point, :class:`DynamicTasks`::

    from celery_dcron import DynamicTasks

    tasks = DynamicTasks(app)
    tasks.add("report", "proj.tasks.report", cron="0 7 * * mon-fri", tz="Europe/Paris")
    tasks.pause("report")
    tasks.run_now("report")          # an extra dispatch now, with its own task id
    tasks.remove("report")

Every input is validated here, before anything is written: errors are
:class:`~celery_dcron.InvalidEntryError` (or ``InvalidScheduleError``) naming the
field and the fix. Writes use compare-and-set on the entry's ``version``, so two
concurrent editors get a :class:`~celery_dcron.ConflictError` instead of losing a
write. Every change is published to the running instances, which pick it up
within about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from . import bulk
from . import validation as rules
from .bulk import BulkResult
from .celery_schedules import from_celery
from .config import Settings
from .entries import EntrySpec, EntryState, new_spec
from .enums import EntrySource
from .exceptions import (
    ConfigurationError,
    EntryNotFoundError,
    InvalidEntryError,
    InvalidScheduleError,
)
from .registry import Registry
from .schedules import CronSchedule, Schedule
from .taskcheck import argument_mismatch, load_task_modules
from .ticks import run_now_task_id
from .validation import OPTION_KEYS, SCHEDULE_FIELDS

__all__ = ["OPTION_KEYS", "DynamicTasks"]

#: The fields :meth:`DynamicTasks.add` and :meth:`DynamicTasks.update` accept.
_FIELDS = frozenset(
    {
        "task", "cron", "every", "at", "schedule", "tz", "args", "kwargs", "payload",
        "options", "enabled", "start_at", "end_at", "max_runs", "after_run",
        "misfire_policy", "misfire_grace", "description",
    }
)  # fmt: skip
#: The fields that make up the task's call: an update of one checks its arguments again.
_CALL_FIELDS = frozenset({"task", "args", "kwargs", "payload"})
#: Fields kept as their rule returns them: field -> (EntrySpec attribute, rule).
_SIMPLE: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "args": ("args", rules.args),
    "options": ("options", rules.options),
    "enabled": ("enabled", rules.enabled),
    "max_runs": ("max_runs", rules.max_runs),
    "after_run": ("after_run", rules.after_run),
    "misfire_policy": ("misfire_policy", rules.misfire_policy),
    "misfire_grace": ("misfire_grace_s", rules.misfire_grace),
    "description": ("description", rules.description),
}


class DynamicTasks:
    """Dynamic entries of one namespace (``dcron_namespace``) of an app's registry.

    ``check_tasks`` (default True, whatever the beat's ``dcron_check_tasks``) refuses a
    task name the app does not know, once the app's task modules are loaded (``include``,
    ``imports``, ``autodiscover_tasks``), and args/kwargs that do not fit the signature of
    a task it knows. Pass False when this process cannot import the tasks.
    """

    #: How to turn the task check off, named by its errors (the CLI names its flag).
    check_off_hint: ClassVar[str] = "pass check_tasks=False"

    def __init__(
        self,
        app: Any,
        *,
        settings: Settings | None = None,
        registry: Registry | None = None,
        check_tasks: bool = True,
    ) -> None:
        self.app = app
        self.settings = settings or Settings.from_app(app)
        self.registry = registry or Registry.from_settings(self.settings)
        self.check_tasks = check_tasks
        self._task_registry: Any = None  # app.tasks, once read (see _tasks)

    # -- reading -------------------------------------------------------------------

    def get(self, name: str) -> EntrySpec:
        """The entry ``name``; raises EntryNotFoundError."""
        spec = self.registry.get_entry(name)
        if spec is None:
            raise EntryNotFoundError(f"entry {name!r}: not found in namespace "
                                     f"{self.settings.namespace!r}")  # fmt: skip
        return spec

    def export(self) -> list[EntrySpec]:
        """The dynamic entries (written through this API or the CLI: not those of
        ``beat_schedule`` nor of the Django admin), by name; see ``celery dcron export``."""
        return [spec for spec in self.list() if spec.source is EntrySource.DYNAMIC]

    def list(self) -> list[EntrySpec]:
        """Every entry (static and dynamic) that parses, by name."""
        entries, _bad = self.registry.entries()
        return [entries[name] for name in sorted(entries)]

    def state(self, name: str) -> EntryState:
        """Shared run state of ``name`` (anchor, last tick, runs, last node)."""
        return self.registry.states([name]).get(name) or EntryState()

    def deleted(self) -> dict[str, int]:
        """Tombstoned names and their deletion time (ms)."""
        return self.registry.tombstones()

    # -- writing -------------------------------------------------------------------

    def add(self, name: str, task: str | None = None, **fields: Any) -> EntrySpec:
        """Add a dynamic entry; refused if the name exists or is deleted (tombstoned).

        Exactly one schedule: ``cron="*/5 * * * *"`` (6 fields: seconds first) with an
        optional ``tz``; ``every=`` seconds or a timedelta; ``at=`` an aware datetime
        (one-off); or ``schedule=`` a Celery ``schedule``/``crontab``/``solar``.
        Other fields: ``args``, ``kwargs``, ``payload`` (sent to ``dcron_default_task``
        when there is no task), ``options`` ({queue, routing_key, exchange, priority,
        expires, headers}), ``enabled``, ``start_at``, ``end_at``, ``max_runs``,
        ``after_run`` ("delete", "tombstone" or "disable" after the last run),
        ``misfire_policy``, ``misfire_grace`` (seconds), ``description``.
        """
        spec = self._build(name, task, fields)
        return self.registry.put_entry(spec, expected_version=None, force=False)

    def build(
        self,
        name: str,
        task: str | None = None,
        *,
        now_ms: int | Callable[[], int] | None = None,
        **fields: Any,
    ) -> EntrySpec:
        """Validate the fields of :meth:`add` and return the entry it would write, without
        writing anything. A one-off ``at=`` must be after ``now_ms`` (default: the Redis
        server's time; pass your own, or a function that returns it, to validate without
        Redis, as the Django admin does).
        """
        return self._build(name, task, fields, now_ms=now_ms)

    def add_many(
        self,
        entries: Iterable[Mapping[str, Any] | EntrySpec],
        *,
        replace: bool = False,
        chunk: int = 1000,
        skip_invalid: bool = False,
        dry_run: bool = False,
    ) -> BulkResult:
        """Add many entries: all are validated first (with ``skip_invalid``, each chunk is
        written once validated, while the next ones are), then written ``chunk`` at a
        time, one pipelined round trip per chunk, several at once
        (and once per call, with cron or one-off entries, the server's time is read).

        Each entry is a mapping of :meth:`add`'s fields with its ``name`` (and ``task``),
        a line of ``export`` (parsed), or an :class:`EntrySpec`. If any is invalid,
        nothing is written: :class:`~celery_dcron.exceptions.BulkInvalidError` lists each
        (``problems``: position, name, field, message); ``skip_invalid=True`` writes the
        others and reports them in ``BulkResult.invalid``. ``dry_run=True`` validates only.

        Each entry is written as :meth:`add` writes it (version 1, anchored once); a name
        already taken, deleted (tombstoned) or static is refused and reported in
        ``BulkResult.refused`` while the others are written. ``replace=True`` overwrites
        an existing entry instead (its version + 1; deleted and static names are still
        refused). See :mod:`celery_dcron.bulk`.
        """
        return bulk.add_many(
            self, entries, replace=replace, chunk=chunk, skip_invalid=skip_invalid,
            dry_run=dry_run,
        )  # fmt: skip

    def force_add(self, name: str, task: str | None = None, **fields: Any) -> EntrySpec:
        """Add or overwrite ``name``, even a deleted (tombstoned) or static one."""
        spec = self._build(name, task, fields)
        return self.registry.put_entry(spec, expected_version=None, force=True)

    def update(
        self, name: str, *, expected_version: int | None = None, **changes: Any
    ) -> EntrySpec:
        """Change some fields of ``name`` (compare-and-set).

        ``expected_version`` (from a :meth:`get`) makes the update fail with
        ConflictError if anyone changed the entry since; without it, the version just
        read is used, so a write made between that read and this one is not lost either.
        """
        current = self.get(name)
        spec = self._apply(current, changes)
        version = current.version if expected_version is None else expected_version
        return self.registry.put_entry(spec, expected_version=version, force=False)

    def put(
        self, spec: EntrySpec, *, expected_version: int | None = None, force: bool = False
    ) -> EntrySpec:
        """Write ``spec``, an entry made by :meth:`build` (perhaps changed since with
        ``spec.with_changes(...)``), keeping its ``source``; returns it as stored.

        The whole entry is validated again first. ``expected_version=None`` creates it
        (ConflictError if the name exists or is deleted); a version updates it only if it
        is still that one (VersionConflictError otherwise). ``force`` writes over a
        deleted (tombstoned) or static name, and with ``expected_version=None`` over
        anything.
        """
        return self.registry.put_entry(
            self.check(spec), expected_version=expected_version, force=force
        )

    def check(self, spec: EntrySpec) -> EntrySpec:
        """Validate ``spec`` (an entry made by :meth:`build`, perhaps changed since) as
        :meth:`put` does before writing it; returns it. Raises InvalidEntryError."""
        if not isinstance(spec, EntrySpec):
            raise InvalidEntryError(
                f"{spec!r} is not an EntrySpec; make one with build()", field="name"
            )
        name = rules.entry_name(spec.name)
        if spec.source is EntrySource.STATIC:
            raise InvalidEntryError(
                f"entry {name!r}: source: static entries come from beat_schedule; give the "
                f"entry another source (build() makes {EntrySource.DYNAMIC.value!r} ones)",
                field="source",
            )
        rules.task_name(name, spec.task)
        rules.options(name, spec.options)
        if self.check_tasks:
            self._task(name, spec.task, has_payload=True)
        self._check_result(spec, call=True)
        return spec

    def remove(self, name: str, *, expected_version: int | None = None) -> None:
        """Remove ``name`` (definition and state). A static entry comes back with the next
        instance start; use :meth:`mark_deleted` to keep it out.

        ``expected_version`` (from a :meth:`get`) removes it only if nobody changed or
        removed it since (VersionConflictError otherwise)."""
        if not self.registry.remove_entry(name, tombstone=False, expected_version=expected_version):
            raise EntryNotFoundError(f"entry {name!r}: not found")

    def mark_deleted(self, name: str) -> bool:
        """Remove ``name`` and tombstone it: re-adding it (also from a static
        ``beat_schedule``) is refused until :meth:`force_add` or :meth:`reuse_deleted`.
        Returns whether an entry existed."""
        rules.entry_name(name)
        return self.registry.remove_entry(name, tombstone=True)

    def reuse_deleted(self, name: str) -> bool:
        """Free a deleted (tombstoned) name. Returns whether it was tombstoned."""
        return self.registry.reuse_deleted(name)

    def cleanup(self, name: str) -> int:
        """Erase every trace of ``name``: definition, state, tombstone, unsent claims."""
        return self.registry.cleanup(name)

    def pause(self, name: str) -> EntrySpec:
        """Disable ``name``; its owner stops firing it at its next step."""
        return self.registry.set_enabled(name, False)

    def resume(self, name: str) -> EntrySpec:
        """Enable ``name`` again; missed ticks follow its misfire policy."""
        return self.registry.set_enabled(name, True)

    def reset(self, name: str) -> None:
        """Start ``name`` afresh: anchored now, no last tick, run count 0."""
        if not self.registry.reset(name):
            raise EntryNotFoundError(f"entry {name!r}: not found")

    def run_now(self, name: str) -> str:
        """Ask the owner of ``name`` for one extra dispatch now; returns its task id.

        The run does not change the schedule nor count towards ``max_runs``.
        """
        request_ms = self.registry.run_now(name)
        return run_now_task_id(self.settings.namespace, name, request_ms)

    def pause_all(self) -> None:
        """Pause the whole namespace: no instance claims or sends anything until
        :meth:`resume_all`; missed ticks then follow each entry's misfire policy."""
        self.registry.set_paused(True)

    def resume_all(self) -> None:
        self.registry.set_paused(False)

    def is_paused(self) -> bool:
        return self.registry.is_paused()

    # -- validation: the field rules are celery_dcron.validation's ---------------------

    def _build(
        self,
        name: str,
        task: str | None,
        fields: Mapping[str, Any],
        *,
        now_ms: int | Callable[[], int] | None = None,
        app_zone: str | None = None,
        version: int = 0,
    ) -> EntrySpec:
        """The new entry ``name`` (at ``version``), validated; ``app_zone``: the app's
        timezone, when the caller read it already (:meth:`_app_zone`)."""
        changes = dict(fields)
        changes["task"] = task
        return self._new(name, changes, now_ms=now_ms, app_zone=app_zone, version=version)

    def _new(
        self, name: str, changes: dict[str, Any], *, now_ms: int | Callable[[], int] | None,
        app_zone: str | None, version: int,
    ) -> EntrySpec:  # fmt: skip
        """:meth:`_build` of ``changes``: the new entry's fields and task (None: none
        given), in a dict of the caller's, which this keeps."""
        rules.entry_name(name)
        rules.known_fields(name, changes, _FIELDS)  # (the task is one of them)
        new = self._changed(name, None, changes, now_ms=now_ms, app_zone=app_zone)
        spec = new_spec(name=name, version=version, **new)
        self._check_result(spec, call=True)
        return spec

    def _apply(
        self,
        spec: EntrySpec,
        changes: Mapping[str, Any],
        *,
        now_ms: int | Callable[[], int] | None = None,
    ) -> EntrySpec:
        rules.known_fields(spec.name, changes, _FIELDS)
        result = spec.with_changes(**self._changed(spec.name, spec, changes, now_ms=now_ms))
        self._check_result(result, call=bool(changes.keys() & _CALL_FIELDS))
        return result

    def _changed(
        self,
        name: str,
        spec: EntrySpec | None,
        changes: Mapping[str, Any],
        *,
        now_ms: int | Callable[[], int] | None = None,
        app_zone: str | None = None,
    ) -> dict[str, Any]:
        """The fields of ``spec`` that ``changes`` set, validated (``spec`` None: a new
        entry ``name``; then the fields always include its task and schedule)."""
        # a new entry has exactly one schedule (checked first); an update, at most one
        kind = (
            rules.one_schedule(name, changes, SCHEDULE_FIELDS, required=True)
            if spec is None
            else None
        )
        new: dict[str, Any] = {"source": EntrySource.DYNAMIC if spec is None else spec.source}
        old_kwargs: Mapping[str, Any] = {} if spec is None else spec.kwargs
        if spec is None or "task" in changes:
            has_payload = changes.get("payload") is not None or "payload" in old_kwargs
            new["task"] = self._task(name, changes.get("task"), has_payload=has_payload)
        schedule = self._schedule(name, spec, changes, kind, now_ms=now_ms, app_zone=app_zone)
        if schedule is not None:
            new["schedule"] = schedule
        for field, value in changes.items():
            simple = _SIMPLE.get(field)
            if simple is not None:
                attr, rule = simple
                new[attr] = rule(name, value)
        kwargs = dict(old_kwargs)
        if "kwargs" in changes:
            payload = kwargs.get("payload")
            kwargs = rules.kwargs(name, changes["kwargs"])
            if "payload" not in changes and payload is not None and "payload" not in kwargs:
                kwargs["payload"] = payload
        if changes.get("payload") is not None:
            kwargs["payload"] = changes["payload"]
        new["kwargs"] = kwargs
        if "start_at" in changes or "end_at" in changes:
            tz = self._zone_of_naive(spec, changes)
            for key, attr in (("start_at", "start_ms"), ("end_at", "end_ms")):
                if key in changes:
                    value = changes[key]
                    new[attr] = None if value is None else rules.instant(name, key, value, tz)
        return new

    def _check_result(self, spec: EntrySpec, *, call: bool) -> None:
        """The rules of the whole entry; ``call``: its task call changed (args checked
        against the task's signature)."""
        rules.ending(spec)
        rules.stored_json(spec, max_bytes=self.settings.max_payload_bytes)
        if self.check_tasks and call:
            self._check_arguments(spec)

    def _check_arguments(self, spec: EntrySpec) -> None:
        task = self._tasks().get(spec.task)
        if task is None:
            return
        mismatch = argument_mismatch(task, spec.args, spec.kwargs)
        if mismatch is not None:
            field, reason = mismatch
            raise InvalidEntryError(
                f"entry {spec.name!r}: {reason}; fix them, or {self.check_off_hint}",
                field=field,
            )

    def _task(self, name: str, task: Any, *, has_payload: bool) -> str:
        if task is None:
            if not has_payload:
                raise InvalidEntryError(
                    f"entry {name!r}: task: give a task name, or a payload for dcron_default_task",
                    field="task",
                )
            if self.settings.default_task is None:
                raise InvalidEntryError(
                    f"entry {name!r}: task: a payload-only entry needs the "
                    "dcron_default_task setting (the task that receives payloads), "
                    "or give a task name",
                    field="task",
                )
            task = self.settings.default_task
        checked = rules.task_name(name, task)
        if self.check_tasks and not self._known(name, checked):
            raise InvalidEntryError(
                f"entry {name!r}: task: {checked!r} is not registered in this Celery app (its "
                "include=, imports and autodiscover_tasks modules are loaded); check the "
                f"name, or {self.check_off_hint}",
                field="task",
            )
        return checked

    def _known(self, name: str, task: str) -> bool:
        """Whether the app knows ``task``, once its task modules are imported."""
        if task in self._tasks():
            return True
        try:
            load_task_modules(self.app)
        except Exception as exc:  # the user's modules: any error, named with the fix
            raise ConfigurationError(
                f"entry {name!r}: task: importing the Celery app's task modules to check "
                f"{task!r} failed: {exc!r}; fix that module, or {self.check_off_hint}"
            ) from exc
        return task in self._tasks()

    def _tasks(self) -> Any:
        """``app.tasks``, read once (a locked property, a Python call per read): the same
        dict for the app's life, which registering a task fills."""
        if self._task_registry is None:
            self._task_registry = self.app.tasks
        return self._task_registry

    def _app_zone(self) -> str:
        """The zone of a cron (or crontab) given without ``tz=``: the app's ``timezone``."""
        return str(getattr(self.app.conf, "timezone", None) or "UTC")

    def _zone_of_naive(self, spec: EntrySpec | None, changes: Mapping[str, Any]) -> str | None:
        """The zone of naive datetimes: ``tz=``, else (in an update) the entry's own."""
        tz = changes.get("tz")
        if tz is None and spec is not None and isinstance(spec.schedule, CronSchedule):
            return spec.schedule.tz
        return tz if isinstance(tz, str) else None

    def _schedule(
        self,
        name: str,
        spec: EntrySpec | None,
        changes: Mapping[str, Any],
        kind: str | None,
        *,
        now_ms: int | Callable[[], int] | None = None,
        app_zone: str | None = None,
    ) -> Schedule | None:
        """The new schedule, or None when ``changes`` keep the entry's (``spec`` None: a
        new entry ``name``, whose schedule field is ``kind``; an update finds its own)."""
        if spec is not None:
            kind = rules.one_schedule(name, changes, SCHEDULE_FIELDS, required=False)
        tz = rules.tz(name, changes.get("tz"))
        if kind is None:
            if tz is not None and spec is not None and isinstance(spec.schedule, CronSchedule):
                return rules.cron(name, spec.schedule.expr, tz, day_or=spec.schedule.day_or)
            if tz is not None and spec is not None:
                raise InvalidScheduleError(
                    f"entry {name!r}: tz: only cron schedules have a timezone", field="tz"
                )
            return None
        value = changes[kind]
        if kind == "every":
            return rules.every(name, value)
        # A partial update keeps the zone: a cron (or crontab) given without tz= takes the
        # entry's own, and only a new entry (or a change from another kind) the app's.
        naive_tz = self._zone_of_naive(spec, changes)
        if kind == "at":
            now = self.registry.server_ms if now_ms is None else now_ms
            return rules.at(name, value, naive_tz, now_ms=now)
        zone = naive_tz or app_zone or self._app_zone()
        if kind == "cron":
            return rules.cron(name, value, zone)
        return from_celery(value, entry=name, app_tz=zone)
