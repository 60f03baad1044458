"""The Django admin in a real browser (headless Chromium driven by Playwright), against the
demo: real beats, a real worker, a real redis-server and the Django server.

The browser is Debian's ``chromium`` (``apt-get install chromium``), or ``$DCRON_CHROMIUM``,
or the one ``python -m playwright install chromium`` downloads. None found is a fixture
error naming the fix, never a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
#: Screenshots of the pages the test visits, to look at (and keep as CI artifacts).
SCREENSHOTS = Path(os.environ.get("DCRON_SCREENSHOTS", "/tmp/dcron-admin-screenshots"))
PASSWORD = "browser-test-pw"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_path() -> str:
    candidates = [os.environ.get("DCRON_CHROMIUM")]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            bundled = p.chromium.executable_path
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except Exception:
        pass
    pytest.fail(
        "no Chromium for the browser test: `apt-get install chromium` (Debian/Ubuntu), set "
        "DCRON_CHROMIUM=/path/to/chrome, or `python -m playwright install chromium`",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class Demo:
    """``python -m example_project.demo`` with 2 beats, on the test's redis-server."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "demo.log"
        env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
                   DCRON_DEMO_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1")  # fmt: skip
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "example_project.demo", "--redis-url", redis_url,
             "--beats", "2", "--port", str(self.port), "--duration", "170"],
            cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def web_up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the demo exited early:\n{self.output()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.base}/admin/login/", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)


@pytest.fixture
def demo(redis_server: RedisServer, tmp_path: Path) -> Iterator[Demo]:
    d = Demo(redis_server.url_for(0), tmp_path)
    try:
        wait_for(d.web_up, 60, "the demo's Django server")
        wait_for(lambda: len(re.findall(r"-> working", d.output())) >= 2, 30, "2 working beats")
        yield d
    finally:
        d.stop()


@pytest.fixture
def page(demo: Demo) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=CHROMIUM_ARGS)  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            browser.close()


def row_text(page: Any, name: str) -> str:
    return str(page.locator("#result_list tr", has_text=name).first.inner_text())


def test_admin_in_a_browser_create_fix_watch_pause_run_now_cluster(page: Any, demo: Demo) -> None:
    base = demo.base
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")

    # an invalid cron: the error is shown on the cron field
    page.goto(f"{base}/admin/celery_dcron/dynamictask/add/")
    page.fill("#id_name", "browser-task")
    page.fill("#id_task", "demo.heartbeat")  # typed; the registered names are suggested
    page.select_option("#id_schedule_kind", "cron")
    page.fill("#id_cron", "61 * * * *")
    page.click("input[name=_save]")
    error = page.locator(".field-cron .errorlist, .errorlist#id_cron_error").first
    assert "minute must be 0-59" in error.inner_text()

    # fixed: every 2 seconds; a running beat fires it, the list shows owner and last run
    page.fill("#id_cron", "*/2 * * * * *")
    page.click("input[name=_save]")
    page.wait_for_url(re.compile(r".*/dynamictask/$"))

    def fired() -> bool:
        page.goto(f"{base}/admin/celery_dcron/dynamictask/")
        cells = page.locator("#result_list tr", has_text="browser-task").first
        owner = cells.locator("td.field-owner").inner_text().strip()
        last = cells.locator("td.field-last_run").inner_text().strip()
        return owner not in ("", "-") and last not in ("", "-")

    wait_for(fired, 20, "the beat to fire browser-task (owner and last run shown)")
    text = row_text(page, "browser-task")
    assert "active" in text
    assert re.search(r"\d\d:\d\d:\d\d UTC \((\d+ s ago|now)\)", text), text  # human time

    # at 1400 px the whole list fits: the last-run and runs columns are not cut
    page.set_viewport_size({"width": 1400, "height": 900})
    page.reload()
    page.screenshot(path=str(SCREENSHOTS / "changelist-1400.png"), full_page=True)
    width = page.evaluate("document.documentElement.clientWidth")
    for column in ("th.column-last_run", "th.column-runs", "td.field-runs"):
        box = page.locator(f"#result_list {column}").first.bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, (column, box, width)
    scroller = page.locator("#changelist .results").first
    assert scroller.evaluate("e => e.scrollWidth <= e.clientWidth"), "the list scrolls sideways"
    assert "Static entries (beat_schedule, read-only)" in page.locator("#dcron-static").inner_text()
    assert "heartbeat-2s" in page.locator("#dcron-static").inner_text()

    # pause it with the action
    page.locator("#result_list tr", has_text="browser-task").first.locator(
        "input.action-select"
    ).check()
    page.select_option("select[name=action]", "disable_tasks")
    page.click("button[name=index]")
    assert "1 tasks disabled." in page.locator(".messagelist").inner_text()
    assert "paused" in row_text(page, "browser-task")

    # run it now (an extra run, even while paused)
    page.locator("#result_list tr", has_text="browser-task").first.locator(
        "input.action-select"
    ).check()
    page.select_option("select[name=action]", "run_now")
    page.click("button[name=index]")
    assert "Sent to run now: browser-task (task id" in page.locator(".messagelist").inner_text()

    # the worker's results appear on the change form (django-celery-results). Each look is
    # a fresh goto of the form's address: a reload() issued while the click's navigation is
    # still under way fails in Chromium ("Not attached to an active page").
    page.locator("#result_list a", has_text="browser-task").first.click()
    page.wait_for_url(re.compile(r".*/dynamictask/\d+/change/$"))
    change_form = page.url

    def has_results() -> bool:
        page.goto(change_form)
        return "SUCCESS" in page.locator(".field-recent_runs").inner_text()

    wait_for(has_results, 20, "results of browser-task on its change form")

    # the cluster page, linked from the admin index
    page.goto(f"{base}/admin/")
    page.click("a[href$='/admin/celery_dcron/clusterstatus/']")
    nodes = page.locator("table.dcron-nodes").inner_text()
    assert nodes.count("working") == 2, nodes
    assert "refreshes itself every 5 seconds" in page.locator(".dcron-refresh").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "cluster.png"), full_page=True)

    assert demo.stop() == 0, demo.output()[-4000:]  # the demo's own check: no tick sent twice
