"""Verifies examples/approval end to end, in a real browser: the agent (Python client) streams its
steps to the reviewer's page (JS client, served by serve.py, in headless Chromium driven by
selenium + chromedriver) and asks it to approve with a 60 s deadline. Approve reaches the agent,
which finishes; Deny stops it; closing the page fails the agent's request with responder_gone
within seconds, far from the 60 s deadline.

The broker runs with 2 shards and examples/ringcast-examples.toml, as the README says. Screenshots
go to $RINGCAST_TEST_ARTIFACTS (default: <tmp>/ringcast-test-artifacts/approval); with
RINGCAST_UPDATE_SCREENSHOT=1 the approve test also rewrites docs/img/approval.png, the README's.

Skipped when Chromium, chromedriver or selenium is missing, unless CI is set: there it must run
(.ci/run installs Debian's chromium and chromium-driver, tests/requirements.txt selenium).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers import Broker, rest_request

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "approval"
CONFIG_PATH = ROOT / "examples" / "ringcast-examples.toml"
ARTIFACTS = Path(os.environ.get("RINGCAST_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "ringcast-test-artifacts" / "approval")
README_SHOT = ROOT / "docs" / "img" / "approval.png"

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM_BIN"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
CHROMEDRIVER = next((p for p in (os.environ.get("CHROMEDRIVER_BIN"), shutil.which("chromedriver"),
                                 "/usr/lib/chromium/chromedriver") if p and os.path.exists(p)), None)

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    SELENIUM = None
except ImportError as e:  # pragma: no cover (CI installs it)
    SELENIUM = str(e)


def _require_browser() -> None:
    missing = [what for what, ok in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER),
                                     (f"selenium ({SELENIUM})", SELENIUM is None)) if not ok]
    if not missing:
        return
    reason = (f"{', '.join(missing)} not installed: apt-get install chromium chromium-driver, "
              f"pip install -r tests/requirements.txt")
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI is set, so the browser test must run, but {reason}")
    pytest.skip(reason)


class Proc:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str]):
        self.lines: list[str] = []
        self.cv = threading.Condition()
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, cwd=ROOT)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self.cv.wait(0.2)):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output:\n{self.output()}")
                self.cv.wait(min(left, 0.2))

    def wait(self, timeout: float) -> int:
        rc = self.p.wait(timeout)
        time.sleep(0.1)  # let the pump read the last lines
        return rc

    def output(self) -> str:
        with self.cv:
            return "\n".join(self.lines)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.fixture(scope="module")
def stack():
    """The broker (2 shards, the examples' config) and serve.py in front of it."""
    _require_browser()
    b = Broker(CONFIG_PATH.read_text(), shards=2, name="approval-broker")
    serve = Proc([sys.executable, str(EXAMPLE / "serve.py"), "--config", str(CONFIG_PATH), "--listen", "127.0.0.1:0",
                  "--url", f"ws://127.0.0.1:{b.port}/v1", "--rest", f"http://127.0.0.1:{b.rest_port}"])
    try:
        page = serve.wait_line(r"approval page on (http://127\.0\.0\.1:\d+)/", 10).group(1)
        yield b, page
    finally:
        serve.stop()
        b.stop()


@pytest.fixture(scope="module")
def browser(stack):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=760,900",
                "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    d.set_page_load_timeout(20)
    try:
        yield d
    finally:
        d.quit()


def _console(d) -> str:
    try:
        return "\n".join(f"{e['level']} {e['message']}" for e in d.get_log("browser"))
    except Exception as e:  # noqa: BLE001 (diagnostics only)
        return f"(no browser log: {e})"


def _reviewers_on(b: Broker, run: str) -> list[str]:
    r = rest_request(b, "GET", f"/v1/channels/{quote(f'runs/{run}/progress', safe='')}/peers", auth=_key())
    assert r.status == 200, r
    return sorted(p["peerId"] for p in r.json["peers"])


def _key() -> tuple:
    import tomllib
    key = tomllib.loads(CONFIG_PATH.read_text())["apps"][0]["secret_keys"][0]
    return key["id"], key["secret"]


class Page:
    """One tab with the review page of one run."""

    def __init__(self, d, base: str, run: str):
        self.d, self.run = d, run
        self.home = d.current_window_handle
        d.switch_to.new_window("tab")
        self.handle = d.current_window_handle
        d.get(f"{base}/?run={run}")
        self.until(lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "online", 15,
                   "the page did not connect")

    def until(self, cond, timeout: float, what: str):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(cond)
        except Exception as e:
            raise AssertionError(f"{what} within {timeout}s ({type(e).__name__}); browser console:\n{_console(self.d)}"
                                 f"\npage text:\n{self.text()}") from None

    def text(self) -> str:
        try:
            return self.d.find_element(By.TAG_NAME, "body").text
        except Exception:  # noqa: BLE001
            return "(page gone)"

    def steps(self) -> list[str]:
        return [e.text for e in self.d.find_elements(By.CSS_SELECTOR, "#steps li .text")]

    def pending(self):
        return self.until(lambda d: d.find_element(By.CSS_SELECTOR, '.question[data-state="pending"]'), 20,
                          "no pending question appeared")

    def wait_step(self, text: str, timeout: float = 15):
        self.until(lambda d: text in self.steps(), timeout, f"step {text!r} did not appear")

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def close(self) -> None:
        """Close the tab (as a person closing it would) and go back to the first one."""
        if self.handle in self.d.window_handles:
            self.d.switch_to.window(self.handle)
            self.d.close()
        self.d.switch_to.window(self.home)


def _agent(b: Broker, run: str, timeout: float = 60) -> Proc:
    return Proc([sys.executable, str(EXAMPLE / "agent.py"), "--url", f"ws://127.0.0.1:{b.port}/v1",
                 "--config", str(CONFIG_PATH), "--run", run, "--step-delay", "0.15", "--timeout", str(timeout),
                 "--wait-reviewer", "20"])


def _run_id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def _pending_question(page: Page, agent: Proc, timeout: float = 60):
    """The steps before the question reached the page, then the question with a countdown."""
    agent.wait_line(r"^step \d+: Waiting for approval", 20)
    card = page.pending()
    page.wait_step("Ran 214 unit tests: all passed")
    steps = page.steps()
    assert steps[:3] == ["Started", "Checked out acme/shop at 4f2c9e1", "Ran 214 unit tests: all passed"], steps
    assert "Deploy shop:1.4.2 to production" in card.find_element(By.CSS_SELECTOR, ".action").text
    secs = int(re.fullmatch(r"(\d+) s", card.find_element(By.CSS_SELECTOR, ".countdown").text).group(1))
    assert timeout - 10 <= secs <= timeout, secs
    return card


@pytest.mark.timeout(120)
def test_approve_reaches_the_agent_which_finishes(stack, browser) -> None:
    b, base = stack
    run = "demo"  # the README's run, and its screenshot
    page = Page(browser, base, run)
    agent = _agent(b, run)
    try:
        card = _pending_question(page, agent)
        time.sleep(1.2)  # the countdown has moved
        left = int(card.find_element(By.CSS_SELECTOR, ".countdown").text.split()[0])
        assert left < 60, left
        shot = page.shot("approval-pending")
        if os.environ.get("RINGCAST_UPDATE_SCREENSHOT"):
            README_SHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, README_SHOT)
        # A narrow window (a phone) still shows both buttons.
        browser.set_window_size(390, 844)
        for sel in (".approve", ".deny"):
            assert card.find_element(By.CSS_SELECTOR, sel).is_displayed(), sel
        page.shot("approval-pending-narrow")
        browser.set_window_size(760, 900)

        card.find_element(By.CSS_SELECTOR, ".approve").click()
        assert agent.wait(15) == 0, agent.output()
        assert agent.output().splitlines()[-1] == "approved", agent.output()
        assert "step 7: Approved by reviewer" in agent.output(), agent.output()
        page.wait_step("Finished")
        steps = page.steps()
        assert steps[-6:] == ["Approved by reviewer", "Deploying replica 1/3", "Deploying replica 2/3",
                              "Deploying replica 3/3", "Deployed shop:1.4.2 to production", "Finished"], steps
        assert card.get_attribute("data-state") == "approved"
        page.shot("approval-approved")
    finally:
        agent.stop()
        page.close()


@pytest.mark.timeout(120)
def test_deny_stops_the_agent(stack, browser) -> None:
    b, base = stack
    run = _run_id("deny")
    page = Page(browser, base, run)
    agent = _agent(b, run)
    try:
        card = _pending_question(page, agent)
        card.find_element(By.CSS_SELECTOR, ".deny").click()
        assert agent.wait(15) == 3, agent.output()
        out = agent.output().splitlines()
        assert out[-1] == "denied", out
        assert not any("Deploying" in l for l in out), out
        page.wait_step("Stopped: denied by reviewer (denied on the review page)")
        assert card.get_attribute("data-state") == "denied"
        page.shot("approval-denied")
    finally:
        agent.stop()
        page.close()


@pytest.mark.timeout(120)
def test_closing_the_page_fails_the_request_with_responder_gone(stack, browser) -> None:
    b, base = stack
    run = _run_id("close")
    page = Page(browser, base, run)
    agent = _agent(b, run)
    try:
        _pending_question(page, agent)
        assert _reviewers_on(b, run) == ["agent", "reviewer"]
        page.shot("approval-before-close")
        t0 = time.monotonic()
        page.close()
        rc = agent.wait(15)
        took = time.monotonic() - t0
        assert rc == 4, agent.output()
        assert agent.output().splitlines()[-1] == "responder_gone", agent.output()
        print(f"closing the page -> agent exited with responder_gone after {took:.2f}s")
        assert took < 5, f"the agent took {took:.1f}s to learn the reviewer left (deadline 60 s)"
        assert "Stopped: the reviewer left before answering" in agent.output()
    finally:
        agent.stop()
        page.close()


@pytest.mark.timeout(120)
def test_no_answer_by_the_deadline_times_out_on_both_sides(stack, browser) -> None:
    """The broker's deadline (here 3 s): the agent gets request_timeout, the page's card says so."""
    b, base = stack
    run = _run_id("timeout")
    page = Page(browser, base, run)
    agent = _agent(b, run, timeout=3)
    try:
        card = _pending_question(page, agent, timeout=3)
        assert agent.wait(10) == 5, agent.output()
        assert agent.output().splitlines()[-1] == "request_timeout", agent.output()
        page.until(lambda d: card.get_attribute("data-state") == "closed", 5, "the card did not close")
        assert card.find_element(By.CSS_SELECTOR, ".outcome").text.startswith("Time is up"), page.text()
        page.wait_step("Stopped: no answer within 3 s")
    finally:
        agent.stop()
        page.close()
