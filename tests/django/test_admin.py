"""The admin through Django's test client, against a real redis-server and real engines."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_celery_results.models import TaskResult

from celery_dcron.api import DynamicTasks
from celery_dcron.clock import ManualClock
from celery_dcron.contrib.django.models import DynamicTask
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
    assert '<option value="djtest.ping">djtest.ping</option>' in page
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

    assert tick_iso(state.last_tick_ms) in page  # type: ignore[arg-type]
    assert ">active<" in page
    engine.stopped = True


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
