"""``DistributedScheduler``: the thin glue between Celery beat and the engine.

Start it like any beat scheduler, on as many machines as you like::

    celery -A proj beat -S celery_dcron.DistributedScheduler   # or: -S dcron
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Any, NoReturn

from celery import beat
from celery.schedules import crontab
from celery.utils.log import get_logger

from . import __version__
from . import validation as rules
from .celery_schedules import from_celery
from .clock import RedisClock
from .config import Settings, mask_url
from .engine import Engine
from .enqueue import FastPath, capturing
from .entries import EntrySpec, Tick
from .enums import EntrySource
from .exceptions import (
    ConfigurationError,
    DcronError,
    InvalidEntryError,
    RegistryUnavailableError,
)
from .metrics import start_metrics
from .registry import Registry
from .status import plural
from .strategies import get_strategy
from .taskcheck import argument_mismatch
from .templates import Templates, celery_publish_needed
from .ticks import tick_iso

__all__ = ["DistributedScheduler", "entry_from_beat"]

logger: logging.Logger = get_logger(__name__)

#: Keys a ``beat_schedule`` entry may carry. The ``dcron``-only ones are ignored by
#: Celery's own beat but would make it fail, so they are documented as such.
_BEAT_KEYS = {"task", "schedule", "args", "kwargs", "options", "relative"}
_DCRON_KEYS = {"misfire_policy", "misfire_grace", "max_runs", "start_at", "end_at", "description"}

#: Options passed to ``apply_async`` as they are.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2}

#: The kwargs and options of the many entries that have none: one shared read-only mapping.
_NOTHING: Mapping[str, Any] = MappingProxyType({})

#: Ticks due within this many ms are claimed in the same round trip; each is still
#: published at its tick, never before.
CLAIM_AHEAD_MS = 20

#: Broker operations a kombu publish batch may buffer before flushing on its own: more
#: than the engine puts in one batch, so that a batch is sent (or fails) as a whole.
_BATCH_MAX_OPS = 10_000


#: Messages of the entries due within this long are built ahead (templates), in the idle
#: time between passes, ending _PREPARE_MARGIN_S before the next pass or at an event.
_PREPARE_AHEAD_MS = 60_000
_PREPARE_MARGIN_S = 0.02
#: A tick string no real tick has (1970), for the messages built ahead.
_PROBE_TICKS = (tick_iso(1), tick_iso(2))

#: How soon a stop signal that arrives while the scheduler waits ends the wait.
_SIGNAL_POLL_S = 0.1

_DEFERRED_SIGNALS = {
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGQUIT") if hasattr(signal, name)
}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """Hold beat's stop signals until the block ends, then deliver them. Yields the list
    of signals caught so far, so that a wait in the block can end early.

    Blocking with ``pthread_sigmask`` is not enough: a process-directed signal goes to
    any thread that does not block it (the event listener, the pidbox), and CPython then
    runs the handler in the main thread anyway. So the handlers are swapped for one that
    only records the signal, and the recorded signals are raised again afterwards.
    """
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def record(signum: int, _frame: Any) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in _DEFERRED_SIGNALS}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _exit_misconfigured(problems: list[str]) -> NoReturn:
    """Log each problem on one line (``dcron: beat_schedule entry 'x': cron ...``) and
    exit with status 1 before the loop starts. SystemExit passes through Celery's beat,
    which would otherwise log the error with a traceback before its message."""
    for problem in problems:
        logger.critical("dcron: %s", problem)
    raise SystemExit(1)


def entry_from_beat(name: str, data: Mapping[str, Any], *, app_tz: str) -> EntrySpec:
    """An :class:`EntrySpec` from one ``beat_schedule`` item, by the API's field rules
    (:mod:`celery_dcron.validation`); errors name the entry and the field."""
    if not isinstance(data, Mapping):
        raise InvalidEntryError(f"entry {name!r}: expected a dict, got {type(data).__name__}")
    rules.known_fields(name, data, _BEAT_KEYS | _DCRON_KEYS)
    task = rules.task_name(name, data.get("task"))
    rules.one_schedule(name, data, ("schedule",), required=True)
    schedule = from_celery(data["schedule"], entry=name, app_tz=app_tz)
    kwargs = rules.kwargs(name, data.get("kwargs"))
    options = rules.options(name, data.get("options"), any_key=True)
    start_ms, end_ms = (
        None if data.get(f) is None else rules.instant(name, f, data[f], None, tz_field=False)
        for f in ("start_at", "end_at")
    )
    spec = EntrySpec(
        name=name,
        task=task,
        schedule=schedule,
        args=rules.args(name, data.get("args")),
        kwargs=kwargs or _NOTHING,
        options=options or _NOTHING,
        misfire_policy=rules.misfire_policy(name, data.get("misfire_policy")),
        misfire_grace_s=rules.misfire_grace(name, data.get("misfire_grace")),
        max_runs=rules.max_runs(name, data.get("max_runs")),
        start_ms=start_ms,
        end_ms=end_ms,
        description=rules.description(name, data.get("description")),
        source=EntrySource.STATIC,
    )
    rules.storable(spec)  # args/kwargs/options must survive JSON: fail here, naming the field
    return spec


class DistributedScheduler(beat.Scheduler):
    """A Celery beat scheduler of which any number of instances run at once.

    Entries are split between the live instances; each due tick is claimed in Redis
    before it is sent, so it is sent once however many instances run.
    """

    #: Celery's beat loop caps our waits to this (seconds).
    max_interval = 1

    def __init__(
        self, app: Any, *args: Any, schedule_filename: str | None = None, **kwargs: Any
    ) -> None:
        # ``schedule_filename`` is accepted for compatibility and ignored: state lives in Redis.
        self._engine: Engine | None = None
        self._fast_path: FastPath | None = None
        #: the messages of the fast path, built once per entry (see templates)
        self._templates = Templates()
        self._settings: Settings | None = None
        self._static: dict[str, beat.ScheduleEntry] = {}
        #: a ConfigurationError stopped the loop: close() exits with status 1
        self._misconfigured = False
        super().__init__(app, *args, **kwargs)

    # -- beat's hooks ----------------------------------------------------------------

    def setup_schedule(self) -> None:
        try:
            settings = Settings.from_app(self.app)
        except ConfigurationError as exc:
            _exit_misconfigured([str(exc)])
        self._settings = settings
        self.max_interval = min(float(self.max_interval), settings.heartbeat_interval_s)  # type: ignore[assignment]
        app_tz = str(self.app.timezone)
        specs: list[EntrySpec] = []
        errors: list[str] = []
        for name, data in self._beat_schedule().items():
            try:
                specs.append(entry_from_beat(name, data, app_tz=app_tz))
            except DcronError as exc:
                errors.append(f"beat_schedule {exc}")
        if errors:
            # Not skipped: the static schedule this instance writes replaces the registry's,
            # so a skipped entry would vanish for every instance.
            _exit_misconfigured(errors)
        registry = Registry.from_settings(settings)
        self._engine = Engine(
            settings=settings,
            registry=registry,
            clock=RedisClock(),
            strategy=get_strategy(settings.strategy, virtual_nodes=settings.virtual_nodes),
            publish=self._publish,
            static_entries=specs,
            check=self._check_entry,
            version=__version__,
            publish_batch=self._publish_batch,
            claim_ahead_ms=CLAIM_AHEAD_MS,
            metrics=start_metrics(settings.namespace, settings.metrics_port, settings.metrics_addr),
        )
        # Exactly once when the broker is the registry's Redis (dcron_enqueue): the ticks
        # claimed are built by Celery into a capture, then pushed with their claims.
        self._fast_path = FastPath(
            settings, registry, connection=self.connection, producer=lambda: self.producer
        )
        self._engine.dispatcher.capture = self._fast_path.capture
        self._engine.jobs.freeze_gc = True  # a process of its own: see engine.loading
        logger.info(
            "dcron: node %s joining namespace %r at %s with %s",
            settings.node_id or "<host>:<slot>",
            settings.namespace,
            mask_url(settings.redis_url),
            plural(len(specs), "static entry", "static entries"),
        )
        self._engine.start()

    def _beat_schedule(self) -> dict[str, Any]:
        schedule = dict(self.app.conf.beat_schedule or {})
        if (
            self.app.conf.result_expires
            and not self.app.backend.supports_autoexpire
            and "celery.backend_cleanup" not in schedule
        ):
            schedule["celery.backend_cleanup"] = {
                "task": "celery.backend_cleanup",
                "schedule": crontab("0", "4", "*"),
                "options": {"expires": 12 * 3600},
            }
        return schedule

    def tick(self, *args: Any, **kwargs: Any) -> float:
        engine = self._engine
        if engine is None:
            return float(self.max_interval)
        # Beat's SIGTERM/SIGINT handler raises SystemExit wherever the main thread is. Inside
        # a step that could fall between a publish and its "sent" record, leaving a claim that
        # the next owner re-publishes (same task id, but a second message); inside the wait,
        # in threading's own Event.wait, it can fail with "release unlocked lock" and exit 1.
        # So the signals wait until the step is over (a step is bounded by the socket
        # timeouts), and the wait after it ends within _SIGNAL_POLL_S of one.
        with _signals_deferred() as caught:
            try:
                wait = engine.step()
            except ConfigurationError as exc:
                # e.g. Redis refused the password: no retry fixes it. Beat's loop takes
                # SystemExit for a stop and calls close(), which exits with status 1.
                self._misconfigured = True
                logger.critical("dcron: %s", exc)
                raise SystemExit(1) from None
            if engine.membership.superseded:
                # Another process took this node id over (this one was frozen past its
                # TTL): it must not schedule again. Exit with status 1, so that a
                # supervisor restarts it as a new incarnation, instead of idling forever.
                self._misconfigured = True
                logger.critical(
                    "dcron: node %s was taken over by another process while this one "
                    "was thought dead; exiting (status 1) so that it is restarted",
                    engine.node_id,
                )
                raise SystemExit(1)
            until = time.monotonic() + min(wait, float(self.max_interval))
            if wait > 2 * _PREPARE_MARGIN_S:
                self._prepare_templates(engine, until - _PREPARE_MARGIN_S, caught)
            while not caught:
                left = until - time.monotonic()
                if left <= 0 or engine.wait(min(left, _SIGNAL_POLL_S)):
                    break
        return 0.0

    def sync(self) -> None:
        """Nothing to persist: every claim is already in Redis."""

    def close(self) -> None:
        engine = self._engine
        if engine is not None:
            try:
                engine.stop()
            except ConfigurationError:
                if not self._misconfigured:
                    raise
        super().close()
        if self._misconfigured:
            raise SystemExit(1)

    @property
    def info(self) -> str:
        try:
            s = self._settings or Settings.from_app(self.app)
        except DcronError as exc:
            return f"    . dcron: invalid configuration: {exc}"
        return (
            f"    . dcron redis -> {mask_url(s.redis_url)}\n"
            f"    . dcron namespace -> {s.namespace} (strategy {s.strategy})\n"
            f"    . dcron node -> {s.node_id or socket.gethostname() + ':<slot>'}"
        )

    def get_schedule(self) -> dict[str, beat.ScheduleEntry]:
        return self._static

    def set_schedule(self, schedule: Any) -> None:
        self._static = dict(schedule or {})

    schedule = property(get_schedule, set_schedule)

    # -- the engine's callbacks --------------------------------------------------

    def _check_entry(self, spec: EntrySpec) -> str | None:
        """Why this beat must not send ``spec`` (the engine skips and logs it), or None.

        A task this beat does not import is sent by name, as Celery beat does, unless
        ``dcron_check_tasks``; one it imports must take the entry's args and kwargs
        (Celery's own check before sending, see :mod:`celery_dcron.taskcheck`)."""
        task = self.app.tasks.get(spec.task)
        if task is None:
            if self._settings is not None and self._settings.check_tasks:
                return (
                    f"task: {spec.task!r} is not registered in this beat's Celery app; import "
                    "it (include= / autodiscover_tasks), or set dcron_check_tasks = False to "
                    "send it by name"
                )
            return None
        mismatch = argument_mismatch(task, spec.args, spec.kwargs)
        if mismatch is not None:
            field, reason = mismatch
            return f"{reason}; fix the entry's {field}"
        return None

    def _publish_batch(self) -> AbstractContextManager[object]:
        """Messages published inside go to the broker in one round trip where kombu can
        batch (``Producer.batch``: kombu 5.7+, Redis transport); else each goes at once."""
        batch = getattr(self.producer, "batch", None)
        if batch is None:
            return contextlib.nullcontext()
        return batch(max_size=_BATCH_MAX_OPS)  # type: ignore[no-any-return]

    def _publish(self, spec: EntrySpec, tick: Tick, task_id: str) -> None:
        tick_text = tick_iso(tick.tick_ms)
        task = self.app.tasks.get(spec.task)
        # On the fast path (a capture is open), a message is its entry's template with the
        # tick's id and time, once Celery built two of them the same way (templates).
        capture = self._fast_path.current() if self._fast_path is not None else None
        if capture is not None and celery_publish_needed(self.app, task) is None:
            commands = self._templates.render(spec, task_id, tick_text)
            if commands is not None:
                capture.extend(commands)
                if self._templates.rendered == 1:
                    logger.info(
                        "dcron: enqueue: messages are built once per entry by Celery and "
                        "sent from that template, with each tick's id and time"
                    )
                return
            self._publish_by_celery(spec, task, task_id, tick_text)
            self._templates.learn(spec, task_id, tick_text, capture.peek())
            return
        self._publish_by_celery(spec, task, task_id, tick_text)

    def _prepare_templates(self, engine: Engine, deadline: float, caught: list[int]) -> None:
        """Until ``deadline`` (``time.monotonic()``), an event or a stop signal, build the
        templates of the entries due soon (within _PREPARE_AHEAD_MS) that have none:
        Celery builds two messages of each into a capture (nothing is sent; made-up ids
        and ticks), so that their first ticks, a burst of them included, are already
        sent from templates."""
        fast = self._fast_path
        if fast is None or not engine.membership.joined:
            return
        try:
            if not fast.decide():  # decided before the first tick: then there is time
                return
        except RegistryUnavailableError:
            return
        templates = self._templates
        horizon = engine.clock.now_ms() + _PREPARE_AHEAD_MS
        for name in engine.timeline.upcoming(horizon, templates.max_entries):
            spec = engine.view.spec(name)
            if spec is None or not templates.needs(spec):
                continue
            task = self.app.tasks.get(spec.task)
            if celery_publish_needed(self.app, task) is not None:
                return
            try:
                with capturing(self.producer) as capture:
                    for tick in _PROBE_TICKS:
                        probe_id = f"dcron-probe-{uuid.uuid4()}"
                        self._publish_by_celery(spec, task, probe_id, tick)
                        templates.learn(spec, probe_id, tick, capture.take())
            except Exception as exc:  # the broker, or the entry: its ticks will tell
                logger.debug("dcron: no message template for %s yet: %r", name, exc)
                return
            if time.monotonic() >= deadline or caught or engine.wake.is_set():
                return

    def _publish_by_celery(self, spec: EntrySpec, task: Any, task_id: str, tick: str) -> None:
        """Publish as Celery beat does (``apply_async``, or ``send_task`` by name)."""
        options = dict(spec.options)
        headers = dict(options.pop("headers", None) or {})
        headers["periodic_task_name"] = spec.name
        headers["dcron_tick"] = tick
        options["headers"] = headers
        options.setdefault("retry", True)
        options.setdefault("retry_policy", _PUBLISH_RETRY)
        if task is not None:
            task.apply_async(
                spec.args, dict(spec.kwargs), task_id=task_id, producer=self.producer, **options
            )
        else:
            self.app.send_task(
                spec.task,
                spec.args,
                dict(spec.kwargs),
                task_id=task_id,
                producer=self.producer,
                **options,
            )
