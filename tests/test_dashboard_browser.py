"""The dashboard in a real headless browser: Debian's chromium driven through
its chromedriver by selenium. Nothing is downloaded: both binaries are given
by path, so Selenium Manager never runs.

A real executor serves the page. The tests load it, read what it shows,
click through it and check the database. Without chromium they skip locally
and fail in CI (`make test` installs it). A screenshot goes to
tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from geventq import Status
from tests.support import REPO, http, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "tests" / "artifacts"
WINDOW = (1440, 1250)


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; `make test` installs it with apt (chromium chromium-driver)")
    pytest.skip(f"{reason}: `apt-get install chromium chromium-driver` to run the browser tests")


@pytest.fixture
def browser(monkeypatch):
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        unavailable(f"{', '.join(missing)} not installed")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (requirements-dev.txt)")
    # Belt and braces: Selenium Manager is skipped when both paths are given,
    # and told to stay offline should anything reach it anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*WINDOW)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def severe_console_entries(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    """SEVERE browser console entries, less those containing an allowed text."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
    ]


def find(driver, css: str, timeout: float = 10, visible: bool = True):
    """The element once it is present (and displayed), else AssertionError."""
    from selenium.webdriver.common.by import By

    def found():
        elements = driver.find_elements(By.CSS_SELECTOR, css)
        return next((element for element in elements if not visible or element.is_displayed()), None)

    return wait_for(lambda: stable(found), timeout, message=f"element {css!r}")


def stable(read, timeout: float = 10):
    """read() over elements it finds afresh, run again when the page's refresh
    (every 3 s, re-rendering its tables) replaced one under it."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt():
        try:
            return (read(),)
        except StaleElementReferenceException:
            return None

    return wait_for(attempt, timeout, message="the page to settle")[0]


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return stable(lambda: driver.find_element(By.CSS_SELECTOR, css).text)


def wait_text(driver, css: str, expected: str, timeout: float = 10) -> str:
    return wait_for(
        lambda: expected in text_of(driver, css) and text_of(driver, css),
        timeout,
        message=f"{expected!r} in {css}",
    )


def test_dashboard_shows_a_failed_task_and_retries_it(db, executors, browser):
    # Given an executor, a queue created through the API, some done tasks and
    # one that fails for good
    process = executors.start()
    base = process.admin_url
    status, body = http(
        "POST",
        f"{base}/admin/queue/create",
        {"queue_name": "billing", "table_name": "billing_tasks", "max_workers": 4, "scan_interval": 1},
    )
    assert status == 201, body
    queue_id = body["data"]["id"]
    status, body = http(
        "POST",
        f"{base}/admin/task/batch_create?table=billing_tasks",
        [{"task_type": "record", "task_params": {"invoice": n}} for n in range(12)],
    )
    assert status == 201, body
    status, body = http(
        "POST",
        f"{base}/admin/task/create?table=billing_tasks",
        {
            "task_type": "fail",
            "task_params": {"message": "card declined: insufficient funds"},
            "max_retries": 0,
        },
    )
    assert status == 201, body
    task_id = body["data"]["id"]
    wait_for(
        lambda: db.scalar("SELECT status FROM billing_tasks WHERE id = %s", (task_id,)) == Status.FAILED,
        message="the failing task failed",
    )
    wait_for(lambda: db.scalar(f"SELECT COUNT(*) FROM billing_tasks WHERE status = {Status.DONE:d}") == 12)

    # When the dashboard is opened
    driver = open_dashboard(browser, base)

    # Then it shows the queue (as created) and the server. (Elements are found
    # afresh each time: the page re-renders its tables every 3 s.)
    def queue_cell(field: str):
        return row_cell(find(driver, 'tr[data-queue="billing"]'), field)

    assert stable(lambda: queue_cell("table_name").text) == "billing_tasks"
    assert (
        stable(lambda: queue_cell("server_id").find_element("css selector", "input").get_attribute("value"))
        == ""
    )
    wait_for(
        lambda: stable(lambda: (queue_cell("failed").text, queue_cell("done").text)) == ("1", "12"),
        message="the queue's counts",
    )
    # (a server row lists its queues from its next heartbeat on; the page refreshes every 3 s)
    wait_for(
        lambda: "billing" in stable(lambda: find(driver, 'tr[data-server="server-001"]').text),
        timeout=10,
        message="the server row lists the new queue",
    )
    assert "alive" in stable(lambda: find(driver, 'tr[data-server="server-001"]').text)

    # When the queue and then the failed task are selected
    stable(lambda: queue_cell("queue_name").click())
    stable(lambda: find(driver, f'#tasks-table tbody tr[data-task-id="{task_id}"]').click())

    # Then its error, params and job log are shown, with a Retry button
    wait_text(driver, "#task-error", "RuntimeError: card declined: insufficient funds")
    assert "insufficient funds" in text_of(driver, "#task-params")
    log = wait_text(driver, "#task-log", "failed for good")
    assert "start fail attempt 1/1" in log
    assert text_of(driver, "#detail-status") == "failed"
    find(driver, "#btn-retry")
    save_full_page_screenshot(driver, ARTIFACTS / "dashboard.png")

    # When the queue is switched off in the page (so nothing runs the task
    # again), and Retry is clicked
    def toggle():
        return find(driver, 'tr[data-queue="billing"]').find_element(
            "css selector", 'button[data-action="toggle-status"]'
        )

    stable(lambda: toggle().click())
    wait_for(
        lambda: db.scalar("SELECT status FROM queue_configs WHERE id = %s", (queue_id,)) == 0,
        message="the queue disabled",
    )
    wait_for(
        lambda: "billing" not in (db.scalar("SELECT queues FROM servers") or ""),
        message="the server stopped running billing",
    )
    wait_for(
        lambda: stable(lambda: toggle().get_attribute("aria-checked")) == "false",
        message="the toggle shows the queue off",
    )
    stable(lambda: find(driver, "#btn-retry").click())

    # Then the task is pending again in the database, with a fresh retry budget
    task = wait_for(
        lambda: (row := db.task("billing_tasks", task_id))["status"] == Status.PENDING and row,
        message="the task pending again",
    )
    assert task["retry_count"] == 0 and task["error_msg"] is None
    wait_text(driver, "#detail-status", "pending")
    time.sleep(0.5)
    assert db.task("billing_tasks", task_id)["status"] == Status.PENDING  # disabled: nobody claimed it

    # and the page logged no error to the console
    assert severe_console_entries(driver) == []


def test_dashboard_asks_for_the_token_once(db, executors, browser):
    # Given an executor whose admin API needs a token
    process = executors.start(admin={"token": "open-sesame"})

    # When the dashboard is opened
    driver = open_dashboard(browser, process.admin_url)

    # Then it asks for the token, and says so when a wrong one is given
    find(driver, "#token-overlay")
    find(driver, "#token-input").send_keys("wrong")
    find(driver, "#token-submit").click()
    wait_text(driver, "#token-message", "rejected")

    # When the right one is given
    find(driver, "#token-input").send_keys("open-sesame")
    find(driver, "#token-submit").click()

    # Then the tables load, and the token stays for the tab's session
    find(driver, 'tr[data-queue="email_queue"]')
    find(driver, 'tr[data-server="server-001"]')
    assert driver.execute_script("return sessionStorage.getItem('geventq.adminToken')") == "open-sesame"
    driver.refresh()
    find(driver, 'tr[data-queue="email_queue"]')
    assert not find(driver, "#token-overlay", visible=False).is_displayed()

    # and the console has no errors but the two refused requests' 401s
    # (Chrome logs every 4xx fetch as an error; those two are the point of this test)
    unauthorized = "the server responded with a status of 401"
    assert severe_console_entries(driver, allowed=(unauthorized,)) == []


def test_dashboard_schedules_view(db, executors, browser):
    # Given a server, an every-second schedule that has fired, and a cron one in Berlin
    process = executors.start()
    base = process.admin_url
    db.add_queue("ticks", "tick_tasks")
    for body in (
        {"name": "ticker", "queue_name": "ticks", "task_type": "noop", "interval_seconds": 1},
        {
            "name": "berlin",
            "queue_name": "ticks",
            "task_type": "noop",
            "cron": "*/5 9-17 * * MON-FRI",
            "timezone": "Europe/Berlin",
        },
    ):
        status, answer = http("POST", f"{base}/admin/schedule/create", body)
        assert status == 201, answer
    berlin_next = answer["data"]["next_fires"][0][:19]
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM tick_tasks WHERE status = 2") >= 2, message="ticks done")

    # When the dashboard is opened
    driver = open_dashboard(browser, base)

    # Then each schedule shows its cadence in words, zone, next fire and last fire
    def cell(name: str, field: str):
        return row_cell(find(driver, f'#schedules-table tr[data-schedule="{name}"]'), field)

    assert "every second" in stable(lambda: cell("ticker", "cadence").text)
    berlin = stable(lambda: cell("berlin", "cadence").text)
    assert "Every fifth minute" in berlin and "*/5 9-17 * * MON-FRI" in berlin
    assert stable(lambda: cell("berlin", "timezone").text) == "Europe/Berlin"
    assert stable(lambda: cell("berlin", "next_fires").text).startswith(berlin_next)
    wait_for(lambda: "done" in stable(lambda: cell("ticker", "last_fire").text), message="the last task done")
    assert stable(lambda: cell("hourly_report", "status").text) == "paused"  # init.sql's sample
    save_full_page_screenshot(driver, ARTIFACTS / "schedules.png")

    # When the ticker is paused and the paused sample run now
    def button(name: str, action: str):
        return find(driver, f'#schedules-table tr[data-schedule="{name}"] button[data-action="{action}"]')

    stable(lambda: button("ticker", "pause").click())
    wait_for(lambda: db.scalar("SELECT status FROM schedules WHERE name = 'ticker'") == 0, message="paused")
    wait_for(lambda: stable(lambda: cell("ticker", "status").text) == "paused", message="shown paused")
    stable(lambda: button("hourly_report", "run").click())
    wait_for(
        lambda: (
            db.scalar(
                "SELECT COUNT(*) FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id "
                "WHERE s.name = 'hourly_report'"
            )
            == 1
        ),
        message="a manual run of the sample",
    )

    # And the Berlin schedule is edited: a bad cron is refused naming the field, a good one saved
    stable(lambda: button("berlin", "edit").click())
    cron = find(driver, "#sf-cron")
    cron.clear()
    cron.send_keys("61 * * * *")
    find(driver, "#sf-save").click()
    wait_text(driver, "#sf-error", "cron: Bad minute")
    cron.clear()
    cron.send_keys("0 3 * * *")
    find(driver, "#sf-save").click()
    wait_for(
        lambda: db.scalar("SELECT cron FROM schedules WHERE name = 'berlin'") == "0 3 * * *", message="saved"
    )
    wait_for(lambda: "At 03:00" in stable(lambda: cell("berlin", "cadence").text), message="shown")

    # and the console has no errors but the refused edit's 400
    assert severe_console_entries(driver, allowed=("status of 400",)) == []


def save_full_page_screenshot(driver, path: Path) -> None:
    """The whole page, not only the window (through the DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def open_dashboard(driver, base_url: str):
    driver.get(f"{base_url}/")
    return driver


def row_cell(row, field: str):
    return row.find_element("css selector", f'td[data-field="{field}"]')


def test_dashboard_shows_limits_and_what_they_hold_back_and_stops_a_running_task(db, executors, browser):
    # Given a queue capped at one running task across the cluster, with two
    # hanging tasks: one runs, the other is held back by the cap
    db.add_queue("api", "api_tasks", max_workers=5, global_max_workers=1, rate_limit=30, rate_period=60)
    process = executors.start()
    db.insert_tasks("api_tasks", "hang", 2)
    wait_for(
        lambda: db.status_counts("api_tasks") == {Status.RUNNING: 1, Status.PENDING: 1}, message="one runs"
    )
    running = db.scalar(f"SELECT id FROM api_tasks WHERE status = {Status.RUNNING:d}")

    # When the dashboard is opened
    driver = open_dashboard(browser, process.admin_url)

    # Then the queue's row shows its limits and the task the cap held back
    def limits_cell():
        return row_cell(find(driver, 'tr[data-queue="api"]'), "limits").text

    wait_for(lambda: "held 1 global" in stable(limits_cell), message="the held-back task")
    assert stable(limits_cell).startswith("≤ 1 · 30/60s")

    # When the running task is opened and stopped from the page
    stable(lambda: row_cell(find(driver, 'tr[data-queue="api"]'), "queue_name").click())
    stable(lambda: find(driver, f'#tasks-table tbody tr[data-task-id="{running}"]').click())
    wait_text(driver, "#detail-status", "running")
    assert text_of(driver, "#btn-cancel") == "Stop running task"
    stable(lambda: find(driver, "#btn-cancel").click())

    # Then the page says the cancel was requested, the task ends cancelled, and
    # the held-back one starts in its slot
    wait_text(driver, "#cancel-note", "Cancel requested: server-001")
    wait_for(lambda: db.task("api_tasks", running)["status"] == Status.CANCELLED, message="stopped")
    wait_for(lambda: db.status_counts("api_tasks").get(Status.RUNNING) == 1, message="the other one runs")
    assert db.task("api_tasks", running)["status"] == Status.CANCELLED
    assert severe_console_entries(driver) == []
