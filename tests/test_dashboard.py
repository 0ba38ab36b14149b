"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium through
Debian's ChromeDriver (scripts/services.sh installs both), against a real `runner serve`, a
real `runner worker` (the fake executor, and the socket executor for real BuildKit builds)
and the registry.

Screenshots of every page the tests visit are saved under the session's tmp dir
(`.../screenshots*/`), and also in $RUNNER_DASHBOARD_SCREENSHOTS when it is set."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from runner.core.jobs import BuildRequest, JobRecord, Status, now
from runner.store.joblog import JobLog
from tests.conftest import registry_digest
from tests.test_api import context_tar, start_stack, stop_stack
from tests.test_gitsource import make_repo

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: as the machine notes say: without the background-networking flags Chromium tries to reach the internet
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                  "--window-size=1280,1000"]
ADMIN = "admin-" + uuid.uuid4().hex
READER = "reader-" + uuid.uuid4().hex
TOKENS = [{"name": "admin", "token": ADMIN, "rights": ["submit", "read", "cancel"]},
          {"name": "reader", "token": READER, "rights": ["read"]}]
TOKEN_KEY = "runner.dashboard.token"
TEMPLATES = Path(__file__).resolve().parent.parent / "runner" / "entry" / "dashboard" / "templates"


# -- the stack and the browser ------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    s = start_stack(services, tmp_path_factory, worker=False, api={"tokens": TOKENS},
                    executors={"fake": {"enabled": True}}, git={"allowed_schemes": ["file"]})
    yield s
    stop_stack(s)


def with_worker(stack) -> None:
    h = stack.harness
    if h.worker_proc is None or h.worker_proc.poll() is not None:
        h.worker_proc = h.start_worker()


def without_worker(stack) -> None:
    h = stack.harness
    if h.worker_proc is not None:
        h.stop_worker(h.worker_proc)
        h.worker_proc = None


class Browser:
    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path):
        self.driver, self.base, self.shots = driver, base, shots

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, condition, what: str, timeout: float = 60):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message=what)
        except TimeoutException:
            self.shot("timeout-" + re.sub(r"\W+", "-", what)[:60])
            raise

    def sign_in(self, token: str, path: str = "/") -> None:
        """Open `path` in a fresh session and give the token the page asks for."""
        self.open(path)
        self.js("sessionStorage.clear()")
        self.open(path)
        field = self.wait(lambda d: d.find_element(By.ID, "login").is_displayed() and d.find_element(By.ID, "token"), "the token form")
        field.send_keys(token, Keys.ENTER)
        self.wait(lambda d: d.find_element(By.ID, "main").is_displayed(), "the page after signing in")

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        extra = os.environ.get("RUNNER_DASHBOARD_SCREENSHOTS")
        if extra:
            shutil.copy(path, Path(extra) / path.name)
        return path

    def status(self) -> str | None:
        return self.js("const s = document.getElementById('status'); return s && s.dataset.status")

    def log_state(self) -> str:
        return self.js("return document.getElementById('log').dataset.state")

    def log_rows(self) -> list[str]:
        """The text of the log rows in the DOM (the viewer renders only those in and near view)."""
        return self.js("return [...document.querySelectorAll('#log .line:not([hidden]) .text')].map(e => e.textContent)")

    def csp_violations(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if "Content Security Policy" in e["message"]]


@pytest.fixture(scope="module")
def browser(stack, tmp_path_factory):
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert os.access(tool, os.X_OK), f"{tool} is missing: scripts/services.sh installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield Browser(driver, stack.url, tmp_path_factory.mktemp("screenshots"))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_csp_violations(request):
    """Whatever a test did, the page never needed an inline script or style (the CSP would refuse it)."""
    yield
    if "browser" in request.fixturenames:
        assert request.getfixturevalue("browser").csp_violations() == []


# -- jobs ---------------------------------------------------------------------------------------
def client(stack, token: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def submit_job(stack, build_args: dict | None = None, executor: str = "fake", files: dict | None = None, **fields) -> str:
    """Upload a context and queue a job through the API, as a CI would."""
    job_id = "dash-" + uuid.uuid4().hex[:12]
    with client(stack) as c:
        r = c.post(f"/v1/jobs/{job_id}/context", content=context_tar(files or {"Dockerfile": "FROM scratch\n"}),
                   headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 201, r.text
        body = {"id": job_id, "tags": [f"{stack.harness.registry()}/dashboard/{job_id}:1"], "executor": executor,
                "build_args": build_args or {}, **fields}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
    return job_id


def cancel(stack, *job_ids: str) -> None:
    with client(stack) as c:
        for job_id in job_ids:
            c.post(f"/v1/jobs/{job_id}/cancel")


def row_status(browser: Browser, job_id: str) -> str | None:
    return browser.js("const r = document.getElementById(arguments[0]); return r && r.dataset.status", f"job-{job_id}")


def seed(stack, count: int, tag: str) -> list[JobRecord]:
    """Finished records written straight to the store (history, not jobs to run): creation times
    an hour ago and older, one second apart; even ones on socket, odd on fake; every third failed."""
    store, start = stack.harness.store, time.time() - 3600
    records = []
    for n in range(count):
        created = datetime.fromtimestamp(start - n, UTC)
        status = Status.failed if n % 3 == 0 else Status.succeeded
        record = JobRecord(id=f"seed-{tag}-{n}", request=BuildRequest(id=f"seed-{tag}-{n}", tags=[f"127.0.0.1:5000/seeded-{tag}/app:{n}"]),
                           executor="socket" if n % 2 == 0 else "fake", queue="q", status=status, created_at=created,
                           started_at=created, finished_at=created)
        assert store.create(record)
        records.append(record)
    return records


# -- the tests ---------------------------------------------------------------------------------
def test_the_token_is_asked_once_kept_in_the_tab_and_never_in_a_url(stack, browser):
    page = httpx.get(stack.url + "/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    assert '<tbody id="rows"></tbody>' in page.text  # a shell: the rows come with the token
    for name in os.listdir(TEMPLATES):  # no inline script, style or handler anywhere
        text = (TEMPLATES / name).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), name
        assert not re.search(r"\sstyle=|<style|\son[a-z]+=", text), name
    for path in ("/ui/whoami", "/ui/jobs/rows", "/ui/jobs/events", "/ui/fleet/events"):
        assert httpx.get(stack.url + path).status_code == 401
        assert httpx.get(stack.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401

    browser.open("/")
    browser.js("sessionStorage.clear()")
    browser.open("/")
    browser.wait(lambda d: d.find_element(By.ID, "login").is_displayed(), "the token form")
    assert not browser.driver.find_element(By.ID, "main").is_displayed()
    browser.driver.find_element(By.ID, "token").send_keys("not-a-token", Keys.ENTER)
    browser.wait(lambda d: "not accepted" in d.find_element(By.ID, "login-error").text, "the refusal")
    browser.driver.find_element(By.ID, "token").send_keys(ADMIN, Keys.ENTER)
    browser.wait(lambda d: d.find_element(By.ID, "main").is_displayed(), "the jobs page")
    assert browser.driver.find_element(By.ID, "who-name").text == "admin"
    assert browser.js(f"return sessionStorage.getItem('{TOKEN_KEY}')") == ADMIN
    assert browser.js("return localStorage.length") == 0 and browser.js("return document.cookie") == ""
    browser.open("/fleet")  # asked once: the next page of the tab knows it
    browser.wait(lambda d: d.find_element(By.ID, "main").is_displayed(), "the fleet page without asking again")
    assert not browser.driver.find_element(By.ID, "login").is_displayed()
    assert ADMIN not in browser.driver.current_url
    assert ADMIN not in (stack.harness.workdir / "serve.log").read_text()  # no URL the server logged held it


def test_a_job_row_goes_queued_running_succeeded_without_a_reload(stack, browser):
    without_worker(stack)  # so the job waits in its queue first
    browser.sign_in(ADMIN)
    browser.js("window.notReloaded = true")
    job_id = submit_job(stack, {"FAKE_SLEEP": "4", "FAKE_LINES": "3"})
    seen: list[str] = []

    def status_is(wanted: str):
        def check(_):
            status = row_status(browser, job_id)
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            return status == wanted
        return check

    browser.wait(status_is("queued"), "the new row, queued")
    with_worker(stack)
    browser.wait(status_is("succeeded"), "the row to say succeeded", timeout=120)
    assert seen == ["queued", "running", "succeeded"]
    assert browser.js("return window.notReloaded") is True
    row = browser.driver.find_element(By.ID, f"job-{job_id}")
    record = stack.harness.store.get(job_id)
    assert "✓ succeeded" in row.text and record.worker in row.text and "fake" in row.text
    assert f"dashboard/{job_id}" in row.text  # repository (of an uploaded context: the image's)
    browser.shot("jobs-page-first-job")


def test_a_real_build_log_streams_while_it_runs_grouped_by_step(stack, browser, services, tmp_path):
    with_worker(stack)
    base = services["RUNNER_DEV_BASE_IMAGE"]
    dockerfile = f"FROM {base}\nRUN for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done\nRUN echo done ticking\n"
    browser.sign_in(ADMIN)
    job_id = submit_job(stack, executor="socket", files={"Dockerfile": dockerfile}, no_cache=True)
    browser.open(f"/jobs/{job_id}")

    def mid_build(_):
        text = "\n".join(browser.log_rows())
        return browser.status() == "running" and "tick 2" in text and "tick 6" not in text

    browser.wait(mid_build, "log lines on the page while the build runs", timeout=120)
    browser.wait(lambda _: browser.status() == "succeeded" and browser.log_state() == "ended", "the build's end", timeout=120)
    rows = browser.log_rows()
    assert any("tick 6" in r for r in rows) and any("done ticking" in r for r in rows)

    ref = f"{stack.harness.registry()}/dashboard/{job_id}:1"
    pushed = f"{ref}@{registry_digest(services, ref)}"
    images = browser.driver.find_element(By.CSS_SELECTOR, ".images")
    assert pushed in images.text
    copy = images.find_element(By.CSS_SELECTOR, "button.copy")
    assert copy.get_attribute("data-copy") == pushed
    copy.click()
    browser.wait(lambda _: copy.text == "Copied", "the copy button to confirm")

    # the RUN step is one group: its header folds the lines under it
    heads = browser.driver.find_elements(By.CSS_SELECTOR, "#log .line.group-head")
    run_head = next(h for h in heads if "RUN for i in" in h.text)
    run_head.find_element(By.CSS_SELECTOR, "button.fold").click()
    browser.wait(lambda _: not any("tick 3" in r for r in browser.log_rows()), "the step's lines folded away")
    assert any("RUN for i in" in r for r in browser.log_rows())
    browser.driver.find_element(By.ID, "expand-all").click()
    browser.wait(lambda _: any("tick 3" in r for r in browser.log_rows()), "the step's lines back")

    # each line number links to the line (#L…) and shows when the line was written on hover
    line = next(e for e in browser.driver.find_elements(By.CSS_SELECTOR, "#log .line") if e.text.endswith("tick 3"))
    number = line.find_element(By.CSS_SELECTOR, "a.ln")
    ActionChains(browser.driver).move_to_element(number).perform()
    assert re.search(r"written .*\d{1,2}:\d{2}:\d{2}\.\d{3}", number.get_attribute("title"))
    number.click()
    assert browser.driver.current_url.endswith(f"#L{number.text}")
    browser.wait(lambda d: "target" in d.find_element(By.CSS_SELECTOR, "#log .line.target").get_attribute("class"), "the linked line marked")
    assert browser.driver.find_element(By.CSS_SELECTOR, "#log .line.target .text").text.endswith("tick 3")
    assert not browser.driver.find_element(By.ID, "follow").is_selected()  # a line link stops following

    downloads = tmp_path / "downloads"  # the raw log, as the API serves it
    downloads.mkdir()
    browser.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.driver.find_element(By.ID, "download").click()
    browser.wait(lambda _: (downloads / f"{job_id}.log").is_file(), "the downloaded log")
    with client(stack) as c:
        browser.wait(lambda _: (downloads / f"{job_id}.log").read_text() == c.get(f"/v1/jobs/{job_id}/logs").text, "the whole log")
    browser.open(f"/jobs/{job_id}")
    browser.wait(lambda _: browser.log_state() == "ended", "the log replayed")
    browser.driver.set_window_size(1280, 1600)  # the whole log in view, for the README
    try:
        browser.wait(lambda _: any("done ticking" in r for r in browser.log_rows()), "the log in the taller window")
        browser.shot("job-page")
    finally:
        browser.driver.set_window_size(1280, 1000)


def test_a_hostile_log_line_renders_as_text_and_a_secret_masked(stack, browser, services):
    with_worker(stack)
    secret = "s3cr3t-" + uuid.uuid4().hex
    hostile = "<script>alert(1)</script> <img src=x onerror=alert(2)>"
    dockerfile = (f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nARG TOKEN\n"
                  f"RUN echo '{hostile}' token=$TOKEN && printf '\\033[31mred\\033[0m plain\\n'\n")
    browser.sign_in(ADMIN)
    job_id = submit_job(stack, {"TOKEN": secret}, executor="socket", files={"Dockerfile": dockerfile},
                        secret_build_args=["TOKEN"], labels={"note": "<script>alert(3)</script>"}, no_cache=True)
    browser.open(f"/jobs/{job_id}")
    browser.wait(lambda _: browser.status() == "succeeded" and browser.log_state() == "ended", "the build's end", timeout=120)
    rows = browser.log_rows()
    assert any(r.endswith(f"{hostile} token=***") for r in rows), rows
    with pytest.raises(NoAlertPresentException):
        browser.driver.switch_to.alert.text  # noqa: B018 - reading it is the check
    assert browser.js("return document.querySelectorAll('#log script, #log img, #record script, #record img').length") == 0
    assert secret not in browser.driver.page_source
    assert browser.js("return window.runnerLog.text().includes(arguments[0])", secret) is False
    record = browser.driver.find_element(By.ID, "record").text
    assert "TOKEN=*** (secret)" in record and "note=<script>alert(3)</script>" in record
    red = browser.driver.find_elements(By.CSS_SELECTOR, "#log .text span.fg-1")  # ANSI colour, escape codes gone
    assert [e.text for e in red] == ["red"]
    output = [r for r in rows if r.endswith("red plain")]
    assert len(output) == 1 and "\x1b" not in output[0] and "[31m" not in output[0]


def test_cancel_a_running_job_with_the_button(stack, browser):
    with_worker(stack)
    job_id = submit_job(stack, {"FAKE_SLEEP": "120"})
    browser.sign_in(ADMIN, f"/jobs/{job_id}")
    browser.wait(lambda _: browser.status() == "running", "the job running")
    browser.driver.find_element(By.ID, "cancel").click()
    browser.wait(lambda _: browser.status() == "cancelled", "the page to say cancelled", timeout=60)
    record = stack.harness.store.get(job_id)
    assert record.status is Status.cancelled and record.error.kind == "cancelled"
    assert browser.driver.find_elements(By.ID, "cancel") == []  # a finished job has no cancel button
    browser.wait(lambda _: browser.log_state() == "ended", "the log's end")


def test_a_token_without_the_cancel_right_gets_no_button_and_a_403_if_forced(stack, browser):
    with_worker(stack)
    job_id = submit_job(stack, {"FAKE_SLEEP": "120"})
    try:
        browser.sign_in(READER, f"/jobs/{job_id}")
        browser.wait(lambda _: browser.status() == "running", "the job running")
        assert browser.driver.find_elements(By.ID, "cancel") == [] and browser.driver.find_elements(By.ID, "rerun") == []
        forced = browser.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const headers = {Authorization: "Bearer " + sessionStorage.getItem(arguments[1])};
            Promise.all([`/v1/jobs/${arguments[0]}/cancel`, `/ui/jobs/${arguments[0]}/rerun`].map(
                (url) => fetch(url, {method: "POST", headers}).then(async (r) => [r.status, (await r.json()).message])
            )).then(done);""", job_id, TOKEN_KEY)
        assert forced[0][0] == 403 and "lacks the 'cancel' right" in forced[0][1]
        assert forced[1][0] == 403 and "lacks the 'submit' right" in forced[1][1]
        assert stack.harness.store.get(job_id).status is Status.running
    finally:
        cancel(stack, job_id)


def test_rerun_queues_the_same_request_under_a_new_id(stack, browser, tmp_path):
    with_worker(stack)
    repo, commits = make_repo(tmp_path)
    job_id = "dash-git-" + uuid.uuid4().hex[:10]
    with client(stack) as c:
        r = c.post("/v1/jobs", json={"id": job_id, "tags": [f"{stack.harness.registry()}/dashboard/git:1"], "executor": "fake",
                                     "build_args": {"FAKE_LINES": "2"},
                                     "context": {"type": "git", "url": f"file://{repo}", "ref": "main", "commit": commits[1]}})
        assert r.status_code == 202, r.text
    browser.sign_in(ADMIN, f"/jobs/{job_id}")
    browser.wait(lambda _: browser.status() == "succeeded", "the git job to succeed", timeout=120)
    assert commits[1] in browser.driver.find_element(By.ID, "record").text
    browser.driver.find_element(By.ID, "rerun").click()
    browser.wait(lambda d: "/jobs/" in d.current_url and job_id not in d.current_url, "the new job's page")
    new_id = browser.driver.current_url.rsplit("/", 1)[1]
    browser.wait(lambda _: browser.status() == "succeeded", "the re-run to succeed", timeout=120)
    old, new = stack.harness.store.get(job_id), stack.harness.store.get(new_id)
    assert new.request.model_dump(exclude={"id"}) == old.request.model_dump(exclude={"id"})

    uploaded = submit_job(stack, {"FAKE_LINES": "1"})  # an uploaded context is gone once its job ends
    browser.open(f"/jobs/{uploaded}")
    browser.wait(lambda _: browser.status() == "succeeded", "the uploaded job to succeed", timeout=120)
    assert browser.driver.find_element(By.ID, "rerun").get_attribute("disabled") is not None
    assert "uploaded and is deleted when the job ends" in browser.driver.find_element(By.ID, "rerun-why").text
    with client(stack) as c:
        r = c.post(f"/ui/jobs/{uploaded}/rerun")
        assert r.status_code == 409 and "uploaded" in r.json()["message"]


def test_fleet_lists_a_live_worker_even_when_it_is_idle(stack, browser):
    with_worker(stack)
    store = stack.harness.store
    deadline = time.monotonic() + 30
    while not store.live_workers(["fake"]).get("fake"):  # its first heartbeat
        assert time.monotonic() < deadline, "the worker never sent a heartbeat"
        time.sleep(0.1)
    browser.sign_in(ADMIN, "/fleet")
    browser.wait(lambda d: any("idle" in li.text for li in d.find_elements(By.CSS_SELECTOR, ".workers > li.worker")),
                 "the idle worker in the list")
    [idle] = [li for li in browser.driver.find_elements(By.CSS_SELECTOR, ".workers > li.worker") if "idle" in li.text]
    assert idle.find_element(By.TAG_NAME, "strong").text.endswith(f":{stack.harness.worker_proc.pid}")


def test_fleet_shows_queues_running_jobs_their_workers_and_the_failure_rate(stack, browser):
    with_worker(stack)
    store = stack.harness.store
    failing = submit_job(stack, {"FAKE_EXIT": "3"})
    long = []
    try:
        long = [submit_job(stack, {"FAKE_SLEEP": "120"}) for _ in range(3)]  # the worker runs 2 at once: one waits
        browser.sign_in(ADMIN, "/fleet")

        def cell(executor: str, what: str) -> str | None:
            return browser.js("const c = document.querySelector(`#executor-${arguments[0]} .${arguments[1]}`); return c && c.textContent",
                              executor, what)

        browser.wait(lambda _: cell("fake", "queued") == "1" and cell("fake", "running") == "2", "1 queued and 2 running on fake")
        running = [j for j in long if store.get(j).status is Status.running]
        assert len(running) == 2 and store.r.llen(f"{store.ns}.fake") == 1
        worker = store.get(running[0]).worker
        workers = browser.driver.find_elements(By.CSS_SELECTOR, ".workers > li.worker")
        assert len(workers) == 1 and workers[0].find_element(By.TAG_NAME, "strong").text == worker
        links = {a.text for a in workers[0].find_elements(By.TAG_NAME, "a")}
        assert links == set(running)
        assert store.get(failing).status is Status.failed
        hour = time.time() - 3600
        failed = sum(store.r.zcount(store.index_key(s), hour, "+inf") for s in (Status.failed, Status.timed_out))
        finished = failed + store.r.zcount(store.index_key(Status.succeeded), hour, "+inf")
        assert failed >= 1
        browser.wait(lambda d: f"{failed} failed or timed out of {finished} finished" in d.find_element(By.CSS_SELECTOR, ".rates").text,
                     "the last hour's failure rate")
        browser.shot("fleet-page")
        browser.open("/")  # every status at once, for the README
        browser.wait(lambda _: sorted(row_status(browser, j) or "" for j in long) == ["queued", "running", "running"], "the jobs, live")
        browser.shot("jobs-page")
    finally:
        cancel(stack, *long)


def test_filters_and_paging_over_many_jobs(stack, browser):
    tag = uuid.uuid4().hex[:6]
    seeded = seed(stack, 70, tag)
    browser.sign_in(ADMIN, f"/?repo=seeded-{tag}")

    def shown() -> list[str]:
        return browser.js("return [...document.querySelectorAll('#rows tr')].map(r => r.id.slice(4))")

    browser.wait(lambda _: len(shown()) == 50, "the first page")
    assert shown() == [r.id for r in seeded[:50]]  # newest first
    browser.driver.find_element(By.ID, "older").click()
    browser.wait(lambda _: len(shown()) == 70, "the second page")
    assert shown() == [r.id for r in seeded] and not browser.driver.find_element(By.ID, "older").is_displayed()

    browser.driver.find_element(By.CSS_SELECTOR, "select[name=executor] option[value=fake]").click()
    browser.wait(lambda d: "executor=fake" in d.current_url, "the filter in the URL")
    browser.wait(lambda _: shown() == [r.id for r in seeded if r.executor == "fake"], "only fake jobs")
    browser.driver.find_element(By.CSS_SELECTOR, "select[name=status] option[value=failed]").click()
    browser.wait(lambda _: shown() == [r.id for r in seeded if r.executor == "fake" and r.status is Status.failed], "failed fake jobs")
    assert {e.text for e in browser.driver.find_elements(By.CSS_SELECTOR, "#rows .badge")} == {"✗ failed"}


def test_a_long_log_keeps_the_dom_small_and_line_links_reach_any_line(stack, browser):
    store = stack.harness.store
    job_id = "dash-long-" + uuid.uuid4().hex[:8]
    lines = 200_000
    store.create(JobRecord(id=job_id, request=BuildRequest(id=job_id, tags=["127.0.0.1:5000/dashboard/long:1"]), executor="fake",
                           queue="q", status=Status.running, started_at=now()))
    log = JobLog(store, job_id, max_lines=10 * lines, max_bytes=1024**3)
    for start in range(0, lines, 20_000):
        log.write("".join(f"line {n + 1} of the long log\n" for n in range(start, start + 20_000)))
    log.close()
    store.end(job_id, lambda r: r.model_copy(update={"status": Status.succeeded, "finished_at": now()}))

    browser.sign_in(ADMIN, f"/jobs/{job_id}")
    browser.wait(lambda _: browser.log_state() == "ended", "the whole log", timeout=180)
    assert browser.js("return document.getElementById('log').dataset.lines") == str(lines)
    assert browser.js("return document.querySelectorAll('#log .line').length") <= 200
    assert browser.log_rows()[-1] == f"line {lines} of the long log"  # following: the end is in view
    browser.js("location.hash = '#L150000'")
    browser.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#log .line.target"), "the linked line")
    assert browser.driver.find_element(By.CSS_SELECTOR, "#log .line.target .text").text == "line 150000 of the long log"
    assert browser.js("return document.querySelectorAll('#log .line').length") <= 200


def test_narrow_screens_keyboard_and_dark_mode(stack, browser):
    with_worker(stack)
    job_id = submit_job(stack, {"FAKE_LINES": "5"})
    driver = browser.driver
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 360, "height": 800, "deviceScaleFactor": 1, "mobile": True})
    try:
        browser.sign_in(ADMIN)
        browser.wait(lambda d: d.find_elements(By.ID, f"job-{job_id}"), "the job's row")
        assert browser.js("return window.innerWidth") == 360
        assert browser.js("return document.documentElement.scrollWidth") <= 360  # nothing sticks out sideways
        assert browser.js("return getComputedStyle(document.querySelector('#rows tr')).display") == "block"  # rows are cards
        assert browser.js("return document.querySelector('#rows tr').getBoundingClientRect().right") <= 360
        browser.shot("jobs-page-360px")
        body = driver.find_element(By.TAG_NAME, "body")
        body.click()
        for _ in range(40):  # keyboard only: tab to the first job's link and open it
            driver.switch_to.active_element.send_keys(Keys.TAB)
            if "job-link" in (driver.switch_to.active_element.get_attribute("class") or ""):
                break
        target = driver.switch_to.active_element.text
        driver.switch_to.active_element.send_keys(Keys.ENTER)
        browser.wait(lambda d: d.current_url.endswith(f"/jobs/{target}"), "the job page opened from the keyboard")
        browser.wait(lambda _: browser.log_state() == "ended", "its log")
        assert browser.js("return document.documentElement.scrollWidth") <= 360
        browser.shot("job-page-360px")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def luminance(css: str) -> float:
        r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255

    colours = "const s = getComputedStyle(document.body); return [s.backgroundColor, s.color]"
    for scheme, dark in (("dark", True), ("light", False)):
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
        background, text = browser.js(colours)
        assert (luminance(background) < 0.2 and luminance(text) > 0.7) if dark else (luminance(background) > 0.9 and luminance(text) < 0.2)
    browser.shot("job-page-light")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def read_events(stack, path: str) -> list[tuple[str, str | None, dict]]:
    """A finished job's event stream, parsed as a browser would: (event, id, data) until `end`."""
    events, block = [], {}
    with client(stack) as c, c.stream("GET", path) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                field, _, value = line.partition(": ")
                block[field] = value
                continue
            if "data" in block:
                events.append((block.get("event", "message"), block.get("id"), json.loads(block["data"])))
                if events[-1][0] == "end":
                    return events
            block = {}
    raise AssertionError(f"the stream ended without an end event: {events[-3:]}")


def test_the_log_stream_keeps_every_character_and_resumes_after_an_entry(stack):
    store = stack.harness.store
    job_id = "dash-sse-" + uuid.uuid4().hex[:8]
    store.create(JobRecord(id=job_id, request=BuildRequest(id=job_id, tags=["127.0.0.1:5000/dashboard/sse:1"]), executor="fake",
                           queue="q", status=Status.running, started_at=now()))
    odd = ["progress 10%\r50%\r100%", "tab\there", "<b>bold?</b> & \x1b[31mred\x1b[0m", "", "data: not a field", "id: 7"]
    bulk = [f"bulk line {n:06d}" for n in range(30_000)]  # over one event's 256 KiB: several events
    log = JobLog(store, job_id, max_lines=100_000)
    for line in odd:
        log.line(line)
    log.write("".join(f"{line}\n" for line in bulk))
    log.close()
    store.end(job_id, lambda r: r.model_copy(update={"status": Status.succeeded, "finished_at": now()}))

    events = read_events(stack, f"/ui/jobs/{job_id}/log/events")
    chunks = [data for name, _, data in events if name == "lines"]
    assert len(chunks) >= 2 and events[-1] == ("end", None, {"status": "succeeded"})
    assert all(len(c["text"].split("\n")) == c["lines"] for c in chunks)
    assert "\n".join(c["text"] for c in chunks).split("\n") == odd + bulk
    ms = [mark[1] for c in chunks for mark in c["marks"]]
    assert ms == sorted(ms) and abs(ms[0] / 1000 - time.time()) < 600  # when the entries were written (stream ids)

    first_id = next(event_id for name, event_id, _ in events if name == "lines")
    rest = read_events(stack, f"/ui/jobs/{job_id}/log/events?after={first_id}")
    resumed = "\n".join(data["text"] for name, _, data in rest if name == "lines").split("\n")
    assert resumed == (odd + bulk)[chunks[0]["lines"]:]


def test_bad_input_to_the_dashboard_routes_gets_clear_4xx(stack):
    with client(stack) as c:
        assert c.get("/ui/jobs/rows", params={"limit": "0"}).status_code == 422
        assert c.get("/ui/jobs/rows", params={"status": "bogus"}).json()["field"] == "status"
        for before in ("nan", "-1", "1e30", "abc"):
            assert c.get("/ui/jobs/rows", params={"before": before}).json()["field"] == "before"
        assert c.get("/ui/jobs/no-such-job/events").status_code == 404
        assert c.get("/ui/jobs/no-such-job/log/events").status_code == 404
        assert c.get("/ui/jobs/x/log/events", params={"after": "not-an-id"}).status_code == 422
        assert c.post("/ui/jobs/no-such-job/rerun").status_code == 404
    assert httpx.get(stack.url + "/jobs/NOT..VALID").status_code == 422
    schema = httpx.get(stack.url + "/openapi.json").json()
    assert not [p for p in schema["paths"] if p.startswith("/ui") or p in ("/", "/fleet")]  # not part of the JSON API
