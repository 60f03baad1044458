"""The admin through Django's test client, against a real redis-server and real engines."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_celery_results.models import TaskResult

from celery_dcron.api import DynamicTasks
from celery_dcron.clock import ManualClock
from celery_dcron.contrib.django.models import DynamicTask
from celery_dcron.entries import EntrySpec, PublishRejection, Tick
from celery_dcron.schedules import CronSchedule, IntervalSchedule, SolarSchedule
from tests.django.conftest import make_task
from tests.integration.test_engine import Cluster, Recorder, _server_ms

pytestmark = pytest.mark.django_db(transaction=True)

ADD_URL = "/admin/celery_dcron/dynamictask/add/"
LIST_URL = "/admin/celery_dcron/dynamictask/"
CLUSTER_URL = "/admin/celery_dcron/clusterstatus/"


@pytest.fixture
def client() -> Client:
    User.objects.create_superuser("admin", "a@example.com", "pw")
    c = Client()
    c.login(username="admin", password="pw")
    return c


def text_of(html: str) -> str:
    """The text of an HTML fragment (tags removed)."""
    return re.sub(r"<[^>]+>", "", html).strip()


def form_data(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "report",
        "task": "djtest.ping",
        "enabled": "on",
        "schedule_kind": "cron",
        "cron": "*/5 * * * * *",
        "args": "[]",
        "kwargs": "{}",
        "payload": "null",
        "options": "{}",
        "after_run": "",
        "misfire_policy": "",
        "namespace": "",
        "timezone": "",
        "description": "",
    }
    data.update(fields)
    return data


def test_add_form_lists_registered_tasks_and_shows_errors_on_their_field(
    client: Client, dt: DynamicTasks
) -> None:
    page = client.get(ADD_URL).content.decode()
    assert '<datalist id="dcron-task-names">' in page  # suggested, and any name can be typed
    assert '<option value="djtest.ping">' in page
    assert "celery.backend_cleanup" not in page
    response = client.post(ADD_URL, form_data(cron="61 * * * *"))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "minute must be 0-59" in " ".join(form.errors["cron"])
    assert not DynamicTask.objects.exists()
    response = client.post(ADD_URL, form_data(cron="*/5 * * * * *"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert dt.get("report").source == "django"


def test_list_shows_owner_next_and_last_run_from_the_registry(
    client: Client, dt: DynamicTasks, redis_url: str
) -> None:
    make_task(name="every", schedule_kind="interval", cron="", interval_seconds=1).save()
    cluster = Cluster(redis_url, ManualClock(start_ms=_server_ms(redis_url)), Recorder())
    engine = cluster.add("node-a", [], namespace="djtest")
    cluster.step_all(3)
    cluster.advance(2_500)
    page = client.get(LIST_URL).content.decode()
    assert "node-a" in page  # the owner
    state = dt.state("every")
    assert state.run_count >= 2
    from celery_dcron.ticks import tick_iso

    assert tick_iso(state.last_tick_ms) in page  # type: ignore[arg-type]  # on hover
    assert ">active<" in page
    engine.stopped = True


def test_next_and_last_run_in_the_entry_s_zone_and_relative_to_the_cluster_clock(
    client: Client, dt: DynamicTasks, redis_url: str
) -> None:
    make_task(name="kolkata", cron="* * * * * *", timezone="Asia/Kolkata").save()
    make_task(name="utc", schedule_kind="interval", cron="", interval_seconds=1).save()
    cluster = Cluster(redis_url, ManualClock(start_ms=_server_ms(redis_url)), Recorder())
    engine = cluster.add("node-a", [], namespace="djtest")
    cluster.step_all(3)
    cluster.advance(2_500)
    engine.stopped = True
    page = client.get(LIST_URL).content.decode()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    for name, zone in (("kolkata", "IST"), ("utc", "UTC")):
        row = next(r for r in page.split("<tr") if f">{name}</a>" in r)
        nxt = re.search(r'class="field-next_run">(.*?)</td>', row, re.S)
        last = re.search(r'class="field-last_run">(.*?)</td>', row, re.S)
        assert nxt and last
        # the manual clock ran ahead of Redis: the last run is "in" a few seconds, or "ago"
        for cell in (nxt.group(1), last.group(1)):
            text = text_of(cell)
            assert re.fullmatch(rf"{stamp} {zone} \((in \d+ s|\d+ s ago|now)\)", text), text
        assert "+00:00<" not in nxt.group(1)


def test_one_run_count_the_registry_s_on_the_list_and_the_change_page(
    client: Client, dt: DynamicTasks, redis_url: str
) -> None:
    """The row's copy (refreshed by reconcile) lagged: the change page showed it while the
    list showed the registry's count. Both show the registry's now."""
    task = make_task(name="counted", schedule_kind="interval", cron="", interval_seconds=1)
    task.save()
    cluster = Cluster(redis_url, ManualClock(start_ms=_server_ms(redis_url)), Recorder())
    engine = cluster.add("node-a", [], namespace="djtest")
    cluster.step_all(3)
    cluster.advance(4_500)
    engine.stopped = True
    DynamicTask.objects.filter(pk=task.pk).update(total_run_count=1)  # a stale copy
    runs = dt.state("counted").run_count
    assert runs >= 3
    listed = re.search(r'class="field-runs">(\d+)</td>', client.get(LIST_URL).content.decode())
    change = client.get(f"{LIST_URL}{task.pk}/change/").content.decode()
    shown = re.search(r'field-runs">.*?<div class="readonly">(\d+)</div>', change, re.S)
    assert listed and shown
    assert int(listed.group(1)) == int(shown.group(1)) == runs
    assert "runs (copy)" not in change


def test_a_rejected_publish_shows_as_the_last_error_until_a_later_tick_is_sent(
    client: Client, dt: DynamicTasks
) -> None:
    task = make_task(name="broken")
    task.save()
    at = dt.registry.server_ms()
    error = 'TypeError("ping() takes 0 positional arguments but 1 was given")'
    dt.registry.reject([PublishRejection(
        name="broken", tick_ms=at, task_id="tid-1", reason="arguments", error=error,
        at_ms=at, node="node-a", version=1,
    )])  # fmt: skip
    page = client.get(LIST_URL).content.decode()
    row = next(r for r in page.split("<tr") if ">broken</a>" in r)
    state = re.search(r'class="field-registry_state">(.*?)</td>', row, re.S)
    assert state and text_of(state.group(1)).endswith("last publish rejected (arguments)")
    change = client.get(f"{LIST_URL}{task.pk}/change/").content.decode()
    field = re.search(r'field-last_error">.*?<div class="readonly">(.*?)</div>', change, re.S)
    assert field, change
    shown = text_of(field.group(1))
    assert shown.startswith("publish rejected (arguments) at tick") and "tid-1" in shown
    assert "ping() takes 0 positional arguments" in shown
    dt.registry.mark_sent([Tick(name="broken", tick_ms=at + 1000)])
    assert "last publish rejected" not in client.get(LIST_URL).content.decode()
    change = client.get(f"{LIST_URL}{task.pk}/change/").content.decode()
    field = re.search(r'field-last_error">.*?<div class="readonly">(.*?)</div>', change, re.S)
    assert field and text_of(field.group(1)) == "-"


def test_actions_pause_resume_run_now_and_reset(client: Client, dt: DynamicTasks) -> None:
    task = make_task(name="act")
    task.save()
    ids = {"_selected_action": [task.pk]}
    client.post(LIST_URL, {"action": "disable_tasks", **ids})
    assert dt.get("act").enabled is False and not DynamicTask.objects.get(pk=task.pk).enabled
    client.post(LIST_URL, {"action": "enable_tasks", **ids})
    assert dt.get("act").enabled is True
    response = client.post(LIST_URL, {"action": "run_now", **ids}, follow=True)
    assert "Sent to run now: djtest/act" not in response.content.decode()  # blank namespace
    assert "Sent to run now: act (task id " in response.content.decode()
    assert [r.name for r in dt.registry.requests()] == ["act"]
    response = client.post(LIST_URL, {"action": "reset_runs", **ids}, follow=True)
    assert "Reset: act" in response.content.decode()


def test_list_search_and_filters(client: Client, dt: DynamicTasks) -> None:
    make_task(name="alpha-report", description="nightly").save()
    make_task(name="beta", enabled=False).save()
    page = client.get(LIST_URL, {"q": "nightly"}).content.decode()
    assert "alpha-report" in page and ">beta<" not in page
    page = client.get(LIST_URL, {"enabled__exact": "0"}).content.decode()
    assert ">beta<" in page and "alpha-report" not in page


def test_cluster_page_lists_nodes_and_counts(
    client: Client, dt: DynamicTasks, redis_url: str
) -> None:
    for i in range(4):
        make_task(name=f"c{i}").save()
    cluster = Cluster(redis_url, ManualClock(start_ms=_server_ms(redis_url)), Recorder())
    for node in ("node-a", "node-b"):
        cluster.add(node, [], namespace="djtest")
    cluster.step_all(3)
    index = client.get("/admin/").content.decode()
    assert CLUSTER_URL in index  # linked from the admin index
    page = client.get(CLUSTER_URL).content.decode()
    assert "node-a" in page and "node-b" in page and "working" in page
    assert "4 entries (4 django)" in page
    assert "lost its data" not in page
    cluster.engines[0].registry.client.flushdb()  # Redis loses its data; the engines rebuild
    cluster.step_all(2)
    page = client.get(CLUSTER_URL).content.decode()
    assert "Redis lost its data; the registry was rebuilt at 20" in page
    for e in cluster.engines:
        e.stopped = True


def test_change_form_shows_recent_runs_from_django_celery_results(
    client: Client, dt: DynamicTasks
) -> None:
    task = make_task(name="with-results")
    task.save()
    TaskResult.objects.create(
        task_id="abc-123",
        status="SUCCESS",
        result='"pong"',
        periodic_task_name="with-results",
    )
    page = client.get(f"{LIST_URL}{task.pk}/change/").content.decode()
    assert "abc-123" in page and "SUCCESS" in page
    row = TaskResult.objects.get(task_id="abc-123")
    assert f'href="/admin/django_celery_results/taskresult/{row.pk}/change/"' in page
    runs = text_of(page[page.index('class="dcron-runs"') :])
    assert re.search(
        r"SUCCESS\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \((now|.* ago|in .*)\)", runs
    ), runs


def test_run_now_links_its_task_id_to_the_results(client: Client, dt: DynamicTasks) -> None:
    task = make_task(name="linked")
    task.save()
    page = client.post(
        LIST_URL, {"action": "run_now", "_selected_action": [task.pk]}, follow=True
    ).content.decode()
    tid = re.search(
        r"Sent to run now: linked \(task id <a href=\"([^\"]+)\"><code>([-0-9a-f]+)<", page
    )
    assert tid, page
    assert tid.group(1) == f"/admin/django_celery_results/taskresult/?q={tid.group(2)}"


def test_cluster_page_refreshes_itself_and_says_so(client: Client, dt: DynamicTasks) -> None:
    page = client.get(CLUSTER_URL).content.decode()
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "This page refreshes itself every 5 seconds." in page


def test_static_entries_are_listed_read_only_under_the_dynamic_tasks(
    client: Client, dt: DynamicTasks, redis_url: str
) -> None:
    make_task(name="from-admin").save()
    static = [
        EntrySpec(name="nightly-static", task="djtest.ping",
                  schedule=CronSchedule(expr="0 3 * * *", tz="Europe/Paris")),
        EntrySpec(name="every-7s-static", task="djtest.ping",
                  schedule=IntervalSchedule(every_ms=7000)),
    ]  # fmt: skip
    cluster = Cluster(redis_url, ManualClock(start_ms=_server_ms(redis_url)), Recorder())
    engine = cluster.add("node-a", static, namespace="djtest")
    cluster.step_all(3)
    engine.stopped = True
    page = client.get(LIST_URL).content.decode()
    section = page[page.index('id="dcron-static"') :]
    assert "Static entries (beat_schedule, read-only)" in section
    assert "<td>nightly-static</td>" in section and "<td>every-7s-static</td>" in section
    assert "cron &#x27;0 3 * * *&#x27; Europe/Paris" in section
    assert re.search(r"\d\d:\d\d:\d\d CES?T \(in ", text_of(section))  # Paris time
    assert "from-admin" not in section and "<td>node-a</td>" in section
    assert 'name="_selected_action"' not in section  # no actions: read-only
    searched = client.get(LIST_URL, {"q": "from"}).content.decode()
    assert "nightly-static" not in searched and "Hidden while a search" in searched


def test_solar_schedule_from_the_admin_form(client: Client, dt: DynamicTasks) -> None:
    response = client.post(
        ADD_URL,
        form_data(name="dawn", schedule_kind="solar", cron="", solar_event="dawn_civil",
                  latitude="60.17", longitude="24.94"),
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    assert dt.get("dawn").schedule == SolarSchedule(event="dawn_civil", lat=60.17, lon=24.94)
    page = client.get(LIST_URL).content.decode()
    assert "solar dawn_civil (60.17, 24.94)" in page


def test_a_task_the_web_process_does_not_import_is_saved_with_a_warning(
    client: Client, dt: DynamicTasks
) -> None:
    response = client.post(ADD_URL, form_data(task="workers.only.task", args="[1, 2, 3]"),
                           follow=True)  # fmt: skip
    page = response.content.decode()
    assert response.redirect_chain, page[:3000]
    assert "is not registered in this web process" in page
    assert dt.get("report").task == "workers.only.task"


def test_arguments_that_do_not_fit_a_known_task_are_an_error_on_their_field(
    client: Client, dt: DynamicTasks
) -> None:
    response = client.post(ADD_URL, form_data(task="djtest.add", args="[1, 2, 3]"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "too many positional arguments" in " ".join(errors["args"]), errors
    response = client.post(ADD_URL, form_data(task="djtest.add", args="[1]", kwargs='{"z": 1}'))
    errors = response.context["adminform"].form.errors
    assert "z" in " ".join(errors["kwargs"]), errors
    assert not DynamicTask.objects.exists()
    response = client.post(ADD_URL, form_data(task="djtest.add", args="[1]", kwargs='{"y": 2}'))
    assert response.status_code == 302


def test_registry_down_the_list_still_works_with_a_warning(
    client: Client, dcron_app: Any, redis_server: Any
) -> None:
    from celery_dcron.contrib.django import validators

    dcron_app.conf.dcron_redis_url = redis_server.url_for(0)
    validators._tasks_for.cache_clear()
    make_task(name="kept").save()
    redis_server.kill()
    response = client.get(LIST_URL)
    page = response.content.decode()
    assert response.status_code == 200 and "kept" in page
    assert "Registry unavailable" in page
