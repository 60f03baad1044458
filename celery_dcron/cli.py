"""``celery -A proj dcron ...``: inspect and change the cluster from a shell.

Registered as a Celery sub-command (the ``celery.commands`` entry point), so it
reads the same app and ``dcron_*`` settings as the beat instances. Read commands
take ``--json``. Bad input exits non-zero with a message naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from .api import DynamicTasks
from .entries import EntrySpec, NodeStatus
from .exceptions import DcronError
from .status import ClusterView, describe_schedule
from .ticks import tick_iso

__all__ = ["dcron"]


def _tasks(ctx: click.Context, *, check_tasks: bool | None = None) -> DynamicTasks:
    app = getattr(ctx.find_root().obj, "app", None)
    if app is None:
        raise click.UsageError("no Celery app: run it as `celery -A proj dcron ...`")
    try:
        return DynamicTasks(app, check_tasks=check_tasks)
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
    data = {
        "namespace": tasks.settings.namespace,
        "strategy": tasks.settings.strategy,
        "paused": view.paused,
        "rebuilt_after_data_loss": None if view.reset_ms is None else tick_iso(view.reset_ms),
        "entries": len(view.entries),
        "unowned": len(view.entries) - len(view.owner),
        "nodes": nodes,
    }

    def text() -> str:
        lines = [
            f"namespace {data['namespace']} (strategy {data['strategy']}): "
            f"{len(nodes)} nodes, {data['entries']} entries"
            + (", PAUSED (pause-all)" if view.paused else "")
        ]
        for n in nodes:
            lines.append(
                f"  {n['id']:<40} {n['status']:<9} heartbeat {n['heartbeat_age_s']:.1f}s ago  "
                f"owns {n['entries_owned']}"
            )
        if data["unowned"]:
            lines.append(f"  {data['unowned']} entries have no working node")
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
        deleted = " (deleted: tombstoned)" if name in view.deleted else ""
        raise click.ClickException(f"name: no entry {name!r}{deleted}")
    row = view.entry(name)
    row["static"] = name in view.static
    _out(row, as_json, lambda: "\n".join(f"{k}: {v}" for k, v in sorted(row.items())))


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
@click.option("--after-run", type=click.Choice(["delete", "tombstone", "disable"]))
@click.option("--misfire-policy", type=click.Choice(["once", "all", "skip"]))
@click.option("--description", default="")
@click.option("--disabled", is_flag=True, help="Add it paused.")
@click.option("--force", is_flag=True, help="Overwrite an existing, deleted or static name.")
@click.option("--no-check-task", is_flag=True, help="Do not require a task known to the app.")
@click.pass_context
def add(ctx: click.Context, /, name: str, **o: Any) -> None:
    """Add a dynamic entry (exactly one of --cron, --every, --at)."""
    tasks = _tasks(ctx, check_tasks=False if o["no_check_task"] else None)
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
    adder = tasks.force_add if o["force"] else tasks.add
    spec: EntrySpec = _run(lambda: adder(name, o["task"], **fields))
    click.echo(f"added {spec.name} (version {spec.version}): {describe_schedule(spec.schedule)}")


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
    elif tombstone:
        _run(lambda: tasks.mark_deleted(name))
    else:
        _run(lambda: tasks.remove(name))
    click.echo(f"removed {name}")


def _simple(command: str, doc: str, action: Callable[[DynamicTasks, str], Any]) -> None:
    @dcron.command(name=command, help=doc)
    @click.argument("name")
    @click.pass_context
    def _cmd(ctx: click.Context, name: str) -> None:
        tasks = _tasks(ctx)
        result = _run(lambda: action(tasks, name))
        click.echo(f"{command} {name}" + (f": task id {result}" if command == "run" else ""))


_simple("pause", "Pause (disable) an entry.", lambda t, n: t.pause(n))
_simple("resume", "Resume (enable) an entry.", lambda t, n: t.resume(n))
_simple("run", "Run an entry once now, in addition to its schedule.", lambda t, n: t.run_now(n))
_simple("reset", "Start an entry afresh (anchor now, no runs).", lambda t, n: t.reset(n))


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
            lines.append(f"  {node:<40} {info['count']:>6} entries  {info['share']:>7.1%}")
        return "\n".join(lines)

    _out(data, as_json, text)
