"""``celery -A proj dcron ...``: inspect and change the cluster from a shell.

Registered as a Celery sub-command (the ``celery.commands`` entry point), so it
reads the same app and ``dcron_*`` settings as the beat instances. Read commands
take ``--json``. Bad input exits non-zero with a message naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import click

from .api import DynamicTasks
from .bulk import BulkResult, entry_line, parse_line
from .entries import EntrySpec, NodeStatus
from .exceptions import (
    BulkInvalidError,
    ConflictError,
    DcronError,
    InvalidEntryError,
    VersionConflictError,
)
from .status import ClusterView, describe_entry, describe_rejection, describe_schedule, plural
from .ticks import tick_iso

__all__ = ["dcron"]


class _CliTasks(DynamicTasks):
    """:class:`DynamicTasks` whose errors name this CLI's flag, not the API's keyword."""

    check_off_hint = "use --no-check-task"


def _tasks(ctx: click.Context, *, check_tasks: bool = True) -> DynamicTasks:
    app = getattr(ctx.find_root().obj, "app", None)
    if app is None:
        raise click.UsageError("no Celery app: run it as `celery -A proj dcron ...`")
    try:
        return _CliTasks(app, check_tasks=check_tasks)
    except DcronError as exc:
        raise click.ClickException(str(exc)) from None


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DcronError as exc:
        raise click.ClickException(str(exc)) from None


def _out(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text())


@click.group(name="dcron")
def dcron() -> None:
    """celery_dcron: the distributed beat's nodes and entries."""


@dcron.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Nodes, their status, heartbeat age and entries owned."""
    tasks = _tasks(ctx)
    view: ClusterView = _run(lambda: ClusterView.read(tasks.registry, tasks.settings))
    nodes = [view.node(n) for n in view.nodes]
    entries, unowned = len(view.entries), len(view.entries) - len(view.owner)
    data = {
        "namespace": tasks.settings.namespace,
        "strategy": tasks.settings.strategy,
        "paused": view.paused,
        "rebuilt_after_data_loss": None if view.reset_ms is None else tick_iso(view.reset_ms),
        "entries": entries,
        "unowned": unowned,
        "nodes": nodes,
    }

    def text() -> str:
        lines = [
            f"namespace {data['namespace']} (strategy {data['strategy']}): "
            f"{plural(len(nodes), 'node')}, {plural(entries, 'entry', 'entries')}"
            + (", PAUSED (pause-all)" if view.paused else "")
        ]
        for n in nodes:
            lines.append(
                f"  {n['id']:<40} {n['status']:<9} heartbeat {n['heartbeat_age_s']:.1f}s ago  "
                f"owns {n['entries_owned']}"
            )
        if unowned:
            verb = "has" if unowned == 1 else "have"
            lines.append(f"  {plural(unowned, 'entry', 'entries')} {verb} no working node")
        if data["rebuilt_after_data_loss"]:
            lines.append(
                f"  the registry was rebuilt after a Redis data loss at "
                f"{data['rebuilt_after_data_loss']}"
            )
        return "\n".join(lines)

    _out(data, as_json, text)


@dcron.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """Entries with owner, next tick, last tick, runs and state."""
    tasks = _tasks(ctx)
    view: ClusterView = _run(lambda: ClusterView.read(tasks.registry, tasks.settings))
    rows = [view.entry(name) for name in sorted(view.entries)]

    def text() -> str:
        lines = [
            f"{'NAME':<30} {'STATE':<8} {'OWNER':<30} {'NEXT':<29} {'LAST':<29} {'RUNS':>5}  "
            "SCHEDULE"
        ]
        for r in rows:
            lines.append(
                f"{r['name']:<30} {r['state']:<8} {r['owner'] or '-':<30} "
                f"{r['next_tick'] or '-':<29} {r['last_tick'] or '-':<29} {r['runs']:>5}  "
                f"{r['schedule_text']}"
            )
            if r["last_error"]:
                lines.append(f"{'':<30} last error: {describe_rejection(r['last_error'])}")
        for name, error in view.bad.items():
            lines.append(f"{name:<30} BROKEN   {error}")
        return "\n".join(lines)

    _out(rows, as_json, text)


@dcron.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One entry: its definition and its state."""
    tasks = _tasks(ctx)
    view: ClusterView = _run(lambda: ClusterView.read(tasks.registry, tasks.settings))
    if name not in view.entries:
        if name in view.deleted:
            raise click.ClickException(
                f"name: {name!r} is deleted (tombstoned); `celery dcron reuse {name}` frees "
                "the name"
            )
        raise click.ClickException(f"name: no entry {name!r}")
    row = view.entry(name)
    row["static"] = name in view.static
    _out(row, as_json, lambda: describe_entry(row))


def _json_arg(field: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.ClickException(
            f"{field}: not valid JSON ({exc}); e.g. --{field} '[1, 2]'"
        ) from None


@dcron.command()
@click.argument("name")
@click.option("--task", help="Task name (default: dcron_default_task with --payload).")
@click.option("--cron", help="Cron string, 5 fields or 6 with seconds first.")
@click.option("--every", type=float, help="Interval in seconds.")
@click.option("--at", help="One-off at an ISO 8601 datetime with offset.")
@click.option("--tz", help="IANA timezone of --cron (and of naive --at/--start-at/--end-at).")
@click.option("--args", "args_json", help="JSON list of positional arguments.")
@click.option("--kwargs", "kwargs_json", help="JSON object of keyword arguments.")
@click.option("--payload", "payload_json", help="JSON payload for dcron_default_task.")
@click.option("--queue", help="Queue to send to.")
@click.option("--start-at", help="Do not fire before this ISO 8601 datetime.")
@click.option("--end-at", help="Do not fire after this ISO 8601 datetime.")
@click.option("--max-runs", type=int, help="Stop after this many runs.")
@click.option(
    "--after-run",
    type=click.Choice(["delete", "tombstone", "disable"]),
    help="What to do once it ran for the last time (--at, --max-runs or --end-at): delete "
    "it, delete it and keep the name deleted (tombstone), or disable it.",
)
@click.option(
    "--misfire-policy",
    type=click.Choice(["once", "all", "skip"]),
    help="Ticks missed while no node fired it: run once, run each, or skip them "
    "(default: the dcron_misfire_policy setting).",
)
@click.option("--description", default="", help="Free text, shown by show and the admin.")
@click.option("--disabled", is_flag=True, help="Add it paused.")
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite an existing, deleted (tombstoned) or static name.",
)
@click.option(
    "--no-check-task",
    is_flag=True,
    help="Do not require a task known to the app (after loading its task modules), nor "
    "args/kwargs that fit its signature.",
)
@click.pass_context
def add(ctx: click.Context, /, name: str, **o: Any) -> None:
    """Add a dynamic entry (exactly one of --cron, --every, --at)."""
    tasks = _tasks(ctx, check_tasks=not o["no_check_task"])
    fields: dict[str, Any] = {
        "cron": o["cron"],
        "every": o["every"],
        "at": o["at"],
        "tz": o["tz"],
        "args": _json_arg("args", o["args_json"]) or (),
        "kwargs": _json_arg("kwargs", o["kwargs_json"]) or {},
        "options": {"queue": o["queue"]} if o["queue"] else {},
        "start_at": o["start_at"],
        "end_at": o["end_at"],
        "max_runs": o["max_runs"],
        "after_run": o["after_run"],
        "misfire_policy": o["misfire_policy"],
        "description": o["description"],
        "enabled": not o["disabled"],
    }
    if o["payload_json"] is not None:
        fields["payload"] = _json_arg("payload", o["payload_json"])
    if o["force"]:
        spec: EntrySpec = _run(lambda: tasks.force_add(name, o["task"], **fields))
    else:
        try:
            spec = tasks.add(name, o["task"], **fields)
        except VersionConflictError as exc:
            raise click.ClickException(str(exc)) from None
        except ConflictError:  # the registry's message names the API: name the commands
            raise click.ClickException(_taken(tasks, name)) from None
        except DcronError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"added {spec.name!r} (version {spec.version}): {describe_schedule(spec.schedule)}")


def _taken(tasks: DynamicTasks, name: str) -> str:
    if name in _run(tasks.deleted):
        return (
            f"name: {name!r} is deleted (tombstoned); free it with `celery dcron reuse "
            f"{name}`, or add it with --force"
        )
    return (
        f"name: {name!r} is taken (an existing or a static entry); choose another name, "
        "or replace it with --force"
    )


@dcron.command(name="import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--replace", is_flag=True, help="Overwrite existing entries (not deleted or "
              "static names).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Validate every line; write nothing.")
@click.option("--chunk", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Entries written per round trip to Redis.")  # fmt: skip
@click.option("--no-check-task", is_flag=True, help="Do not require tasks known to the app.")
@click.pass_context
def import_entries(
    ctx: click.Context, file: TextIO, replace: bool, dry_run: bool, chunk: int,
    no_check_task: bool,
) -> None:  # fmt: skip
    """Add the entries of FILE (JSON lines, as export writes them; - for stdin).

    Every line is validated first: if one is invalid, nothing is written and every error
    is printed with its line number. A name already taken (without --replace), deleted or
    static is refused on its own and reported; the other entries are written.
    """
    tasks = _tasks(ctx, check_tasks=not no_check_task)
    items: list[Mapping[str, Any]] = []
    line_of: list[int] = []
    errors: list[tuple[int, str]] = []
    for number, text in enumerate(file, 1):
        if not text.strip():
            continue
        try:
            items.append(parse_line(text))
            line_of.append(number)
        except InvalidEntryError as exc:
            errors.append((number, str(exc)))
    total = len(items) + len(errors)  # the entries, and the lines that are not JSON objects
    try:
        result = tasks.add_many(
            items, replace=replace, chunk=chunk, dry_run=dry_run or bool(errors)
        )
    except BulkInvalidError as exc:
        errors.extend((line_of[p.index], p.message) for p in exc.problems)
        result = BulkResult(total=len(items))
    except DcronError as exc:
        raise click.ClickException(str(exc)) from None
    for number, message in sorted(errors):
        click.echo(f"line {number}: {message}", err=True)
    if errors:
        raise click.ClickException(
            f"{plural(len(errors), 'invalid line')} of {total}: nothing written"
        )
    if dry_run:
        click.echo(f"{plural(total, 'entry', 'entries')} valid; nothing written (--dry-run)")
        return
    for problem in result.refused:
        click.echo(f"line {line_of[problem.index]}: {problem.message} (not written)", err=True)
    click.echo(
        f"imported {plural(result.written, 'entry', 'entries')} of {total}: "
        f"{result.created} created, {result.replaced} replaced, {len(result.refused)} refused"
    )
    if result.refused:
        hint = "" if replace else " (--replace overwrites existing entries)"
        raise click.ClickException(
            f"{plural(len(result.refused), 'entry', 'entries')} refused{hint}"
        )


@dcron.command()
@click.argument(
    "file", type=click.File("w", encoding="utf-8", atomic=True, lazy=False), default="-"
)
@click.pass_context
def export(ctx: click.Context, file: TextIO) -> None:
    """Write the dynamic entries to FILE (default: stdout) as JSON lines, by name, for
    import."""
    tasks = _tasks(ctx)
    specs: list[EntrySpec] = _run(tasks.export)
    for spec in specs:
        file.write(entry_line(spec) + "\n")
    click.echo(f"exported {plural(len(specs), 'entry', 'entries')}", err=True)


@dcron.command()
@click.argument("name")
@click.option("--tombstone", is_flag=True, help="Keep the name deleted (refuse re-adding).")
@click.option("--cleanup", is_flag=True, help="Erase every trace, tombstone included.")
@click.pass_context
def rm(ctx: click.Context, name: str, tombstone: bool, cleanup: bool) -> None:
    """Remove an entry."""
    tasks = _tasks(ctx)
    if cleanup:
        _run(lambda: tasks.cleanup(name))
        click.echo(f"erased every trace of {name!r}")
    elif tombstone:
        existed = _run(lambda: tasks.mark_deleted(name))
        click.echo(
            f"{'removed' if existed else 'no entry'} {name!r}; the name stays deleted "
            f"(tombstoned) until `celery dcron reuse {name}` or `add --force`"
        )
    else:
        _run(lambda: tasks.remove(name))
        click.echo(f"removed {name!r}")


@dcron.command()
@click.argument("name")
@click.pass_context
def pause(ctx: click.Context, name: str) -> None:
    """Pause (disable) an entry."""
    _set_enabled(ctx, name, enabled=False)


@dcron.command()
@click.argument("name")
@click.pass_context
def resume(ctx: click.Context, name: str) -> None:
    """Resume (enable) an entry; missed ticks follow its misfire policy."""
    _set_enabled(ctx, name, enabled=True)


def _set_enabled(ctx: click.Context, name: str, *, enabled: bool) -> None:
    tasks = _tasks(ctx)
    before: EntrySpec = _run(lambda: tasks.get(name))
    if before.enabled is enabled:
        click.echo(f"{name!r} was {'not paused' if enabled else 'already paused'}")
        return
    _run(lambda: tasks.resume(name) if enabled else tasks.pause(name))
    click.echo(f"{'resumed' if enabled else 'paused'} {name!r}")


def _run_now(ctx: click.Context, name: str) -> None:
    tasks = _tasks(ctx)
    task_id = _run(lambda: tasks.run_now(name))
    click.echo(f"asked the owner of {name!r} to run it now: task id {task_id}")


_RUN_HELP = "Run an entry once now, in addition to its schedule; prints the task id."
dcron.command(name="run", help=_RUN_HELP)(click.argument("name")(click.pass_context(_run_now)))
dcron.command(name="run-now", help=f"{_RUN_HELP} Same as run.")(
    click.argument("name")(click.pass_context(_run_now))
)


@dcron.command()
@click.argument("name")
@click.pass_context
def reset(ctx: click.Context, name: str) -> None:
    """Start an entry afresh (anchor now, no runs)."""
    tasks = _tasks(ctx)
    _run(lambda: tasks.reset(name))
    click.echo(f"reset {name!r}: anchored now, no runs")


@dcron.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def deleted(ctx: click.Context, as_json: bool) -> None:
    """Deleted (tombstoned) names, refused by add until reuse or add --force."""
    tasks = _tasks(ctx)
    names: dict[str, int] = _run(tasks.deleted)
    data = {name: tick_iso(ms) for name, ms in sorted(names.items())}
    _out(
        data,
        as_json,
        lambda: (
            "\n".join(f"{name:<40} deleted {at}" for name, at in data.items()) or "no deleted names"
        ),
    )


@dcron.command()
@click.argument("name")
@click.pass_context
def reuse(ctx: click.Context, name: str) -> None:
    """Free a deleted (tombstoned) name, so that add (and beat_schedule) may use it again."""
    tasks = _tasks(ctx)
    if _run(lambda: tasks.reuse_deleted(name)):
        click.echo(f"{name!r} can be used again")
    else:
        click.echo(f"{name!r} was not deleted: nothing to do")


@dcron.command(name="pause-all")
@click.pass_context
def pause_all(ctx: click.Context) -> None:
    """Pause the whole namespace: no instance sends anything until resume-all."""
    tasks = _tasks(ctx)
    _run(tasks.pause_all)
    click.echo(f"namespace {tasks.settings.namespace} paused")


@dcron.command(name="resume-all")
@click.pass_context
def resume_all(ctx: click.Context) -> None:
    """Resume the namespace; missed ticks follow each entry's misfire policy."""
    tasks = _tasks(ctx)
    _run(tasks.resume_all)
    click.echo(f"namespace {tasks.settings.namespace} resumed")


@dcron.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ring(ctx: click.Context, as_json: bool) -> None:
    """How the entries are distributed over the working nodes."""
    tasks = _tasks(ctx)
    view: ClusterView = _run(lambda: ClusterView.read(tasks.registry, tasks.settings))
    per_node: dict[str, list[str]] = {
        n.id: [] for n in view.nodes if n.status is NodeStatus.WORKING
    }
    for name, owner in sorted(view.owner.items()):
        per_node.setdefault(owner, []).append(name)
    total = max(len(view.entries), 1)
    data = {
        "strategy": tasks.settings.strategy,
        "nodes": {
            node: {"count": len(names), "share": round(len(names) / total, 4), "entries": names}
            for node, names in per_node.items()
        },
    }

    def text() -> str:
        lines = [f"strategy {tasks.settings.strategy}"]
        for node, info in data["nodes"].items():  # type: ignore[attr-defined]
            count = plural(info["count"], "entry", "entries")
            lines.append(f"  {node:<40} {count:>14}  {info['share']:>7.1%}")
        return "\n".join(lines)

    _out(data, as_json, text)
