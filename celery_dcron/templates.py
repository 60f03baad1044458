"""Message templates: an entry's broker message built once by Celery, then patched per tick.

On the exactly-once path (:mod:`.enqueue`: the broker is the registry's Redis), Celery's
own ``apply_async`` builds each tick's message into a capture, and the registry pushes it.
That costs ~200-300 µs of CPU a message, most of it Celery and kombu rebuilding what is
the same for every tick of an entry. So the messages of one entry (one version of it)
differ only in a few strings:

- the task id (``headers.id``, ``headers.root_id``, ``properties.correlation_id``),
- the tick (the ``dcron_tick`` header),
- kombu's ``delivery_tag`` (a new ``uuid4`` per message).

:class:`Templates` learns an entry's template from the messages Celery built for two of
its ticks: the first one gives the text with those strings cut out, and the second must
come out of the template byte for byte (with its own id, tick and tag), or the entry is
not templated (its messages differ in something else: an ``expires``/``countdown``
option computed from the publish time, a header added per message by some other code).
From the third tick on, a message is the template with the three strings put back; one
in :data:`AUDIT_EVERY` is still built by Celery and compared, and a difference drops the
template for good (a queue binding or the app's routing changed meanwhile).

Celery's publish is still used, for every message, when something would see the
difference: a receiver of ``before_task_publish``, ``after_task_publish`` or
``task_sent``, ``task_send_sent_event``, or a task class (or app) whose ``apply_async``
(``send_task``) is not Celery's own (a wrapper, as tracing tools install). The memory
held is bounded: at most ``max_entries`` templates, the least recently used dropped.
"""

from __future__ import annotations

import json
import re
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.app.task import Task

from .entries import EntrySpec
from .registry import BrokerCommand

__all__ = ["AUDIT_EVERY", "MAX_TEMPLATES", "MessageTemplate", "Templates", "celery_publish_needed"]

#: One message in this many is built by Celery anyway, and compared with the template.
AUDIT_EVERY = 100
#: Templates kept per process (a few KB each), least recently used dropped.
MAX_TEMPLATES = 10_000

#: The slots of a template, in the order :meth:`MessageTemplate.render` takes them.
_ID, _TICK, _TAG = 0, 1, 2


@dataclass(frozen=True, slots=True)
class _Command:
    op: Any
    target: str
    #: ``value`` with ``%`` doubled and each slot a ``%s`` (``op`` ``pexpire``: no slot)
    fmt: str
    #: which value fills each ``%s`` (:data:`_ID`, :data:`_TICK`, :data:`_TAG`)
    slots: tuple[int, ...]


class MessageTemplate:
    """The broker commands of one entry's message, with its id, tick and tag cut out."""

    __slots__ = ("_commands", "uses")

    def __init__(self, commands: Sequence[_Command], offset: int = 0) -> None:
        self._commands = tuple(commands)
        #: messages rendered since the last audit (starts at an offset of the entry's, so
        #: that the audits of templates learned together do not fall on the same tick)
        self.uses = offset % AUDIT_EVERY

    @classmethod
    def cut(
        cls, commands: Sequence[BrokerCommand], task_id: str, tick: str, *, offset: int = 0
    ) -> MessageTemplate:
        """The template of ``commands`` (a message of ``task_id`` at ``tick``)."""
        out = []
        for command in commands:
            values = {f'"{task_id}"': _ID, f'"{tick}"': _TICK}
            if command.op != "pexpire":
                tag = _delivery_tag(command.value)
                if tag:
                    values[f'"{tag}"'] = _TAG
            pattern = re.compile("|".join(re.escape(v) for v in values))
            slots: list[int] = []
            pieces: list[str] = []
            last = 0
            for match in pattern.finditer(command.value):
                pieces.append(command.value[last : match.start()].replace("%", "%%"))
                pieces.append('"%s"')
                slots.append(values[match.group()])
                last = match.end()
            pieces.append(command.value[last:].replace("%", "%%"))
            out.append(_Command(command.op, command.target, "".join(pieces), tuple(slots)))
        return cls(out, offset)

    def render(
        self, task_id: str, tick: str, tags: Sequence[str] | None = None
    ) -> list[BrokerCommand]:
        """The commands of the message of ``task_id`` at ``tick``; each gets a new
        delivery tag (or its own of ``tags``, one per command)."""
        out = []
        for i, command in enumerate(self._commands):
            if command.slots:
                tag = str(uuid.uuid4()) if tags is None else tags[i]
                fill = (task_id, tick, tag)
                value = command.fmt % tuple(fill[slot] for slot in command.slots)
            else:
                value = command.fmt.replace("%%", "%")
            out.append(BrokerCommand(command.op, command.target, value))
        return out

    def matches(self, commands: Sequence[BrokerCommand], task_id: str, tick: str) -> bool:
        """Whether ``commands`` (Celery's message of ``task_id`` at ``tick``) are this
        template's, byte for byte, with their own delivery tags."""
        if len(commands) != len(self._commands):
            return False
        tags = [_delivery_tag(c.value) if c.op != "pexpire" else "" for c in commands]
        return self.render(task_id, tick, tags) == list(commands)


def _delivery_tag(value: str) -> str:
    try:
        message = json.loads(value)
        return str(message["properties"]["delivery_tag"])
    except (ValueError, KeyError, TypeError):
        return ""


def _is_celerys(method: Any, qualname: str) -> bool:
    function = getattr(method, "__func__", method)
    return (
        getattr(function, "__qualname__", "") == qualname
        and getattr(function, "__module__", "").startswith("celery.")
        and not hasattr(function, "__wrapped__")
    )


def celery_publish_needed(app: Any, task: Task[Any, Any] | None) -> str | None:
    """Why this message must go through Celery's publish every time (someone would see
    a template's difference), or None."""
    for name in ("before_task_publish", "after_task_publish", "task_sent"):
        if getattr(signals, name).receivers:
            return f"a receiver of {name}"
    if app.conf.task_send_sent_event:
        return "task_send_sent_event"
    if task is not None:
        if not _is_celerys(type(task).apply_async, "Task.apply_async"):
            return f"{type(task).__qualname__}.apply_async is not Celery's own"
    elif not _is_celerys(type(app).send_task, "Celery.send_task"):
        return f"{type(app).__qualname__}.send_task is not Celery's own"
    return None


class _Learning:
    """The first message seen of an entry version, waiting for the second."""

    __slots__ = ("template",)

    def __init__(self, template: MessageTemplate) -> None:
        self.template = template


#: an entry whose messages cannot be templated (until its version changes)
_NEVER = object()


class Templates:
    """The message templates of this process's entries, by entry (name and definition:
    a changed entry, or another one under the same name, starts over).

    :meth:`render` returns a tick's message from the template, or None: then the caller
    publishes with Celery (into the capture) and hands the result to :meth:`learn`.
    """

    def __init__(self, max_entries: int = MAX_TEMPLATES) -> None:
        self.max_entries = max_entries
        self._by_name: OrderedDict[str, tuple[EntrySpec, object]] = OrderedDict()
        #: messages rendered from templates, and audits that found a difference
        self.rendered = 0
        self.mismatches = 0

    def __len__(self) -> int:
        return len(self._by_name)

    def _state(self, spec: EntrySpec) -> object | None:
        known = self._by_name.get(spec.name)
        if known is None:
            return None
        if known[0] is not spec:
            if known[0] != spec:
                return None
            self._by_name[spec.name] = (spec, known[1])  # the same entry, read again
        return known[1]

    def render(self, spec: EntrySpec, task_id: str, tick: str) -> list[BrokerCommand] | None:
        """The message of ``spec`` for ``task_id`` at ``tick`` from its template; None
        when there is none yet, or this one is due for an audit."""
        template = self._state(spec)
        if not isinstance(template, MessageTemplate):
            return None
        template.uses += 1
        if template.uses >= AUDIT_EVERY:
            template.uses = 0
            return None  # built by Celery this time, and compared (learn)
        self._by_name.move_to_end(spec.name)
        self.rendered += 1
        return template.render(task_id, tick)

    def learn(
        self, spec: EntrySpec, task_id: str, tick: str, commands: Sequence[BrokerCommand]
    ) -> bool:
        """Take in Celery's message of ``spec`` for ``task_id`` at ``tick``; returns
        whether the entry now has a template."""
        state = self._state(spec)
        if state is _NEVER or not commands:
            return False
        if isinstance(state, MessageTemplate):  # an audit
            if state.matches(commands, task_id, tick):
                return True
            self.mismatches += 1
            self._put(spec, _NEVER)
            return False
        if isinstance(state, _Learning):
            if state.template.matches(commands, task_id, tick):
                self._put(spec, state.template)
                return True
            self._put(spec, _NEVER)
            return False
        offset = zlib.crc32(spec.name.encode())
        self._put(spec, _Learning(MessageTemplate.cut(commands, task_id, tick, offset=offset)))
        return False

    def needs(self, spec: EntrySpec) -> bool:
        """Whether ``spec`` has no template yet and may get one (:meth:`learn`)."""
        state = self._state(spec)
        return state is None or isinstance(state, _Learning)

    def forget(self, name: str) -> None:
        self._by_name.pop(name, None)

    def clear(self) -> None:
        self._by_name.clear()

    def _put(self, spec: EntrySpec, state: object) -> None:
        self._by_name[spec.name] = (spec, state)
        self._by_name.move_to_end(spec.name)
        while len(self._by_name) > self.max_entries:
            self._by_name.popitem(last=False)
