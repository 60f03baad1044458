"""Frozen value objects and their JSON forms. Pure module: no I/O.

Raw dicts stop at the registry: everything above it handles these objects.
Times are integer milliseconds since the epoch (UTC), named ``*_ms``.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .entrytext import (
    ENCODER,
    entry_text,
    json_loads,
    listed,
    mapping_json,
    plain,
    with_version,
)
from .enums import AfterRun, EntrySource, MisfirePolicy, parse_field
from .exceptions import InvalidEntryError
from .schedules import (
    Schedule,
    schedule_from_json,
    schedule_to_json,
)

__all__ = [
    "AfterRun",
    "ClaimResult",
    "EntrySource",
    "EntrySpec",
    "EntryState",
    "MisfirePolicy",
    "Node",
    "NodeStatus",
    "PendingClaim",
    "PublishRejection",
    "Tick",
]


class _Empty(dict):  # type: ignore[type-arg]
    """The kwargs or options of an entry that has none, shared by all such entries read
    from the registry (two empty dicts were a third of an entry's memory): read-only."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("an entry's kwargs and options are read-only: change a copy")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (_empty, ())


_EMPTY = _Empty()


def _empty() -> _Empty:
    return _EMPTY


class NodeStatus(str, enum.Enum):
    """Life cycle of an instance: only ``working`` nodes own entries."""

    STARTING = "starting"
    WORKING = "working"
    LEAVING = "leaving"


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One running scheduler instance as the registry knows it."""

    id: str
    host: str = ""
    pid: int = 0
    version: str = ""
    status: NodeStatus = NodeStatus.STARTING
    weight: float = 1.0
    started_ms: int = 0
    heartbeat_ms: int = 0
    #: this incarnation of the id: ``"<pid>:<process start>:<random>"`` (see
    #: :mod:`celery_dcron.membership`); "" for a record that does not say
    token: str = ""
    #: its heartbeat interval (ms) while its process holds a subscription to its node
    #: channel, which Redis drops when the process dies (crash detection: see
    #: :mod:`celery_dcron.crashes`); 0: it holds none, only its TTL tells it is dead
    watch_ms: int = 0
    #: its node TTL (ms) as its stored record says (its heartbeat time is its expiry less
    #: this); 0: not known. Read only: the registry writes it beside the record's JSON
    ttl_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "token": self.token,
            "version": self.version,
            "status": self.status.value,
            "weight": self.weight,
            "started_ms": self.started_ms,
            "heartbeat_ms": self.heartbeat_ms,
            "watch_ms": self.watch_ms,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Node:
        return cls(
            id=str(data["id"]),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            version=str(data.get("version", "")),
            status=NodeStatus(data.get("status", "starting")),
            weight=float(data.get("weight", 1.0)),
            started_ms=int(data.get("started_ms", 0)),
            heartbeat_ms=int(data.get("heartbeat_ms", 0)),
            token=str(data.get("token", "")),
            watch_ms=int(data.get("watch_ms", 0)),
            ttl_ms=int(data.get("ttl_ms", 0)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EntrySpec:
    """The definition of one scheduled entry (static or dynamic)."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ``None``: the ``dcron_misfire_policy`` setting applies.
    misfire_policy: MisfirePolicy | None = None
    #: ``None``: the ``dcron_misfire_grace`` setting applies.
    misfire_grace_s: float | None = None
    enabled: bool = True
    start_ms: int | None = None
    end_ms: int | None = None
    max_runs: int | None = None
    #: Who wrote it: ``beat_schedule``, the API/CLI, or the Django admin.
    source: EntrySource = EntrySource.STATIC
    description: str = ""
    version: int = 0
    #: What happens once the entry has run for the last time (a one-off ``at`` entry,
    #: or ``max_runs`` reached); None: nothing.
    after_run: AfterRun | None = None
    #: The text of :meth:`dumps`, once made (not part of the value: a copy made by
    #: :meth:`with_changes` starts without it).
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def with_changes(self, **changes: Any) -> EntrySpec:
        if type(self) is EntrySpec:
            return _replace_spec(self, **changes)
        return replace(self, **changes)  # a subclass: its own __init__

    def at_version(self, version: int) -> EntrySpec:
        """This entry at ``version`` (itself when it is at it already). The text of
        :meth:`dumps`, when made, comes along with only its version changed (its last
        key: :func:`~celery_dcron.entrytext.with_version`), not made again."""
        if self.version == version:
            return self
        new = self.with_changes(version=version)
        text = self._text
        if text is not None and type(self.version) is int and type(version) is int:
            object.__setattr__(new, "_text", with_version(text, self.version, version))
        return new

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "schedule": schedule_to_json(self.schedule),
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "enabled": self.enabled,
            "source": self.source.value,
            "version": self.version,
        }
        if self.misfire_policy is not None:
            data["misfire_policy"] = self.misfire_policy.value
        for key in ("misfire_grace_s", "start_ms", "end_ms", "max_runs"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.description:
            data["description"] = self.description
        if self.after_run is not None:
            data["after_run"] = self.after_run.value
        return data

    def call_json(self) -> tuple[str, str] | None:
        """The JSON texts of :attr:`args` and :attr:`kwargs` as :meth:`dumps` writes them,
        when both are plain JSON (no date, UUID... that only kombu's JSON encodes), else
        None. Validation measures them (``dcron_max_payload_bytes``), then passes them to
        :meth:`dumps`, so that they are encoded once."""
        try:
            return plain(listed(self.args)), mapping_json(self.kwargs, plain)
        except (TypeError, ValueError, RecursionError):
            return None

    def dumps(self, *, call: tuple[str, str] | None = None) -> str:
        """The JSON text stored in the registry (kombu's JSON: dates survive); ``call``:
        what :meth:`call_json` returned, when the caller has it.

        Made once per object (validating an entry makes it, writing it uses it again),
        unless :meth:`forget_text` lets go of it: an EntrySpec is frozen, and its args,
        kwargs and options are not changed in place.
        """
        text = self._text
        if text is None:
            try:
                text = entry_text(self, call)
            except (TypeError, ValueError, RecursionError):
                text = None  # not plain: made by kombu's encoder, which names the error
            try:
                text = text or str(ENCODER.encode(self.to_json()))
            except (TypeError, ValueError) as exc:
                raise InvalidEntryError(
                    f"entry {self.name!r}: args/kwargs/options must be JSON-serialisable: {exc}"
                ) from None
            object.__setattr__(self, "_text", text)
        return text

    def forget_text(self) -> None:
        """Let go of the text :meth:`dumps` made (made again when next asked for): for
        an entry kept long but written once, such as a ``beat_schedule`` entry once
        synced (~270 bytes an entry, 27 MB at 100,000)."""
        object.__setattr__(self, "_text", None)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EntrySpec:
        get = data.get
        name = str(data["name"])
        policy, after_run, source = get("misfire_policy"), get("after_run"), get("source", _ABSENT)
        build = _build_spec if cls is EntrySpec else _keywords(cls)
        return build(
            name,
            sys.intern(str(data["task"])),  # one string per task name, not per entry
            schedule_from_json(data["schedule"], entry=name),
            tuple(get("args") or ()),
            dict(kwargs) if (kwargs := get("kwargs")) else _EMPTY,
            dict(options) if (options := get("options")) else _EMPTY,
            None
            if policy is None
            else MisfirePolicy.parse(policy, field_name=f"entry {name!r}: misfire_policy"),
            _opt_float(get("misfire_grace_s")),
            bool(get("enabled", True)),
            _opt_int(get("start_ms")),
            _opt_int(get("end_ms")),
            _opt_int(get("max_runs")),
            # absent: written before sources were (an explicit null is an error)
            EntrySource.STATIC
            if source is _ABSENT
            else (_SOURCES.get(source) if type(source) is str else None)
            or parse_field(EntrySource, source, entry=name, field="source"),
            str(get("description", "")),
            int(get("version", 0)),
            None
            if after_run is None
            else parse_field(AfterRun, after_run, entry=name, field="after_run"),
        )

    @classmethod
    def loads(cls, text: str | bytes) -> EntrySpec:
        data = json_loads(text)
        if not isinstance(data, dict):
            raise InvalidEntryError(f"entry JSON must be an object, got {type(data).__name__}")
        return cls.from_json(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryState:
    """Shared run state of one entry, kept in Redis and advanced only by claims."""

    #: When the entry was first registered; no tick before it ever fires.
    anchor_ms: int | None = None
    #: The last tick claimed (fired, or skipped under the misfire policy).
    last_tick_ms: int | None = None
    run_count: int = 0
    #: The node that made the last claim.
    last_node: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """A tick is one (entry, scheduled time) pair. ``fire=False`` only advances state."""

    name: str
    tick_ms: int
    fire: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimResult:
    """The registry's answer to one claim of a batch."""

    tick: Tick
    won: bool
    #: The entry's last tick after the claim (the winner's tick, or what blocked us).
    last_tick_ms: int | None
    run_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingClaim:
    """A claim that was made but not yet marked sent."""

    name: str
    tick_ms: int
    node: str
    task_id: str
    claimed_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tick_ms": self.tick_ms,
            "node": self.node,
            "task_id": self.task_id,
            "claimed_ms": self.claimed_ms,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingClaim:
        return cls(
            name=str(data["name"]),
            tick_ms=int(data["tick_ms"]),
            node=str(data["node"]),
            task_id=str(data["task_id"]),
            claimed_ms=int(data["claimed_ms"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishRejection:
    """A tick whose publish can never succeed (the broker or Celery refused the message
    itself): recorded once as its entry's last error, and not published again.

    Its JSON form (:meth:`to_json`) is what the registry keeps per entry name.
    """

    name: str
    #: the tick (or, for a run-now, the request time)
    tick_ms: int
    task_id: str
    #: why it can never succeed: ``arguments``, ``serialization``, ``invalid``,
    #: ``routing`` or ``refused`` (see :mod:`celery_dcron.engine.failures`)
    reason: str
    #: the exception, as ``repr()`` (cut to :data:`ERROR_TEXT_MAX` characters)
    error: str
    #: when it was refused (cluster clock)
    at_ms: int
    #: the node that tried to publish it
    node: str
    #: the entry's version when it was refused
    version: int = 0
    run_now: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "tick_ms": self.tick_ms,
            "task_id": self.task_id,
            "reason": self.reason,
            "error": self.error,
            "at_ms": self.at_ms,
            "node": self.node,
            "version": self.version,
            "run_now": self.run_now,
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> PublishRejection:
        return cls(
            name=name,
            tick_ms=int(data["tick_ms"]),
            task_id=str(data["task_id"]),
            reason=str(data["reason"]),
            error=str(data["error"]),
            at_ms=int(data["at_ms"]),
            node=str(data["node"]),
            version=int(data.get("version", 0)),
            run_now=bool(data.get("run_now", False)),
        )


T = TypeVar("T")

#: A key not in the stored JSON.
_ABSENT = object()
#: The stored values of the entry sources, and the members they name.
_SOURCES: dict[object, EntrySource] = {m.value: m for m in EntrySource}


def _positional(cls: type[T]) -> Callable[..., T]:
    """``cls(...)`` of a frozen slots dataclass from the values of its init fields in
    order, the others left at their defaults, without the generated ``__init__`` (its
    keyword handling and one frozen ``object.__setattr__`` a field take half the time of
    decoding an entry, read back by the hundred thousand). No default is filled in."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(f.default is dataclasses.MISSING for f in fields if not f.init):
        raise TypeError(f"{cls.__name__}: a field left out of __init__ needs a plain default")
    setters = tuple(getattr(cls, f.name).__set__ for f in fields if f.init)
    rest = tuple((getattr(cls, f.name).__set__, f.default) for f in fields if not f.init)
    new = object.__new__

    def build(*values: Any) -> T:
        obj = new(cls)
        for set_value, value in zip(setters, values, strict=True):
            set_value(obj, value)
        for set_value, value in rest:
            set_value(obj, value)
        return obj

    return build


def _keywords(cls: type[T]) -> Callable[..., T]:
    """``cls(...)`` from the values of its init fields in order, through its ``__init__``
    (a subclass may have its own)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    return lambda *values: cls(**dict(zip(names, values, strict=True)))


def _keyword_builder(cls: type[T], *, replacing: bool = False) -> Callable[..., T]:
    """``cls(**fields)`` of a frozen slots dataclass, with its defaults and default
    factories, or with ``replacing``, ``dataclasses.replace(obj, **fields)``; without the
    generated ``__init__``: a function made for ``cls`` (as :mod:`dataclasses` makes
    ``__init__``) that sets each slot through its descriptor, not through a frozen
    ``object.__setattr__`` (half the time; a bulk write builds entries by the hundred
    thousand). It runs no ``__post_init__`` (``cls`` may have none); the fields left out
    of ``__init__`` take their defaults, as in ``replace``.
    """
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: has a __post_init__, which this would skip")
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_unset": object()}
    params: list[str] = ["_obj"] if replacing else []
    lines: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        scope[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        value = f.name
        if not f.init:
            if f.default is dataclasses.MISSING:
                raise TypeError(
                    f"{cls.__name__}: a field left out of __init__ needs a plain default"
                )
            scope[f"_default_{f.name}"] = f.default
            value = f"_default_{f.name}"
        elif replacing:
            params.append(f"{f.name}=_unset")
            value = f"_obj.{f.name} if {f.name} is _unset else {f.name}"
        elif f.default is not dataclasses.MISSING:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            scope[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_unset")
            value = f"_factory_{f.name}() if {f.name} is _unset else {f.name}"
        else:
            params.append(f.name)
        lines.append(f"    _set_{f.name}(obj, {value})")
    head = f"{params[0]}, *, {', '.join(params[1:])}" if replacing else f"*, {', '.join(params)}"
    name = f"{cls.__name__}_{'replace' if replacing else 'new'}"  # (its errors name it)
    source = (
        f"def {name}({head}):\n    obj = _new(_cls)\n" + "\n".join(lines) + "\n    return obj\n"
    )
    exec(source, scope)  # (our own text, made from the class's fields)
    build: Callable[..., T] = scope[name]
    return build


_build_spec = _positional(EntrySpec)
#: ``EntrySpec(**fields)``, faster (:func:`_keyword_builder`): validation builds each
#: entry of a bulk write with it.
new_spec = _keyword_builder(EntrySpec)
#: ``dataclasses.replace(spec, **fields)`` of an EntrySpec (not of a subclass), faster.
_replace_spec = _keyword_builder(EntrySpec, replacing=True)

#: The longest error text a :class:`PublishRejection` keeps (a repr can be huge).
ERROR_TEXT_MAX = 1000


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
