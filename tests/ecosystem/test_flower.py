"""Flower 2 on our broker and backend, looked at in headless Chromium as a person would.

One worker with events, one Flower, one browser session: the dashboard shows
the worker online, the tasks page lists the tasks as SUCCESS, a task's page
shows its result. Screenshots are kept in CELERY_DURABLE_ARTIFACTS (default
./artifacts).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("flower")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("CELERY_DURABLE_ARTIFACTS", "artifacts"))
T = "tests.apps.basic."

# CI installs the browser (.ci/run): there a missing one is a failure, not a skip.
pytestmark = pytest.mark.skipif(not os.environ.get("CI") and not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs chromium and chromedriver (.ci/run installs them)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def flower(worker_env):
    """A Flower process on a free port; its URL once it answers."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="flower-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.apps.basic", "flower", f"--port={port}", "--address=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env={**worker_env, "C_FORCE_ROOT": "1"}, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthcheck", timeout=5) as response:
                if response.read() == b"OK":
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"flower-{name}.png"
    driver.save_screenshot(str(path))
    return path


def seen(driver, url: str, check, what: str, timeout: float = 60) -> str:
    """Load ``url`` until the page's visible text passes ``check`` (Flower fills pages from events)."""
    deadline = time.monotonic() + timeout
    while True:
        driver.get(url)
        try:
            WebDriverWait(driver, 5).until(lambda d: check(d.find_element(By.TAG_NAME, "body").text))
            return driver.find_element(By.TAG_NAME, "body").text
        except Exception:
            if time.monotonic() > deadline:
                shot(driver, "failure")
                raise AssertionError(f"{what}; the page shows:\n{driver.find_element(By.TAG_NAME, 'body').text[:2000]}")


def test_flower_shows_our_worker_tasks_and_results(workers, client_app, flower, browser):
    worker = workers("tests.apps.basic", "-E", concurrency=1)
    results = [client_app.send_task(T + "add", args=(n, 3)) for n in range(3)]
    assert [r.get(timeout=60) for r in results] == [3, 4, 5]
    hostname = worker.log().split("celery@", 1)[1].split()[0]

    seen(browser, flower + "/", lambda text: f"celery@{hostname}" in text and "Online" in text,
         "the dashboard should show the worker online")
    # The dashboard redraws its table as events arrive: a row read mid-redraw is stale, read it again.
    row = WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: next((tr.text for tr in d.find_elements(By.CSS_SELECTOR, "table tbody tr")
                        if f"celery@{hostname}" in tr.text), False))
    assert "Online" in row, row
    shot(browser, "dashboard")

    listing = seen(browser, flower + "/tasks", lambda text: text.count("SUCCESS") >= 3 and T + "add" in text,
                   "the tasks page should list the three tasks as SUCCESS")
    for r in results:
        assert r.id in listing
    shot(browser, "tasks")

    seen(browser, f"{flower}/task/{results[2].id}", lambda text: "SUCCESS" in text and "Result" in text,
                "the task's page should show its state and result")
    fields = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "table tr"):  # Flower before 2.1: a table
        cells = row.find_elements(By.TAG_NAME, "td")
        if len(cells) >= 2:
            fields.setdefault(cells[0].text.strip(), cells[1].text.strip())
    for row in browser.find_elements(By.CSS_SELECTOR, "dl div"):
        terms, values = row.find_elements(By.TAG_NAME, "dt"), row.find_elements(By.TAG_NAME, "dd")
        if terms and values:
            fields.setdefault(terms[0].text.strip(), values[0].text.strip())
    assert fields.get("Result") == "5", fields
    assert fields.get("Name") == T + "add", fields
    assert fields.get("Status", fields.get("State")) == "SUCCESS", fields
    shot(browser, "task")


@pytest.fixture
def client_app(worker_env):
    from celery import Celery

    from tests.apps import basic

    app = Celery("client", set_as_current=False)
    app.conf.update(basic.config(worker_env))
    yield app
    app.close()
