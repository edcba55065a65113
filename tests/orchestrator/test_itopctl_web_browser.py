"""The board in a real browser (Debian's chromium, headless, driven by chromedriver): the stages after real
promotions of the fake stage playbooks, live updates while a promotion runs, approvals given on the page that
``itopctl promote --check`` sees, the refusals (not signed in, a spoofed user header, no CSRF token) and a reason
holding HTML shown as text. It takes the screenshot of the board (docs/board.png is a copy: set
UNISTRA_ITOP_BOARD_PNG=docs/board.png to write it there too)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from itopctl.errors import ExitCode
from itopctl_support import Project, backdate

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ITOPCTL = str(Path(sys.executable).parent / "itopctl")
NOT_A_PROXY = "10.9.9.9"  # the only trusted proxy: the browser (127.0.0.1) is not it
pytestmark = [pytest.mark.slow, pytest.mark.browser]

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    profile = tempfile.mkdtemp(prefix="itopctl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    # the driver is named explicitly: selenium-manager never looks for one on the network
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def spawn(project: Project, *args: str, user: str = "alice", log: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **project.env, "ITOPCTL_USER": user}
    out = log.open("w") if log else subprocess.DEVNULL
    return subprocess.Popen([ITOPCTL, *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                            cwd=project.root)  # fmt: skip


@pytest.fixture
def board(sqlite_project: Project) -> Iterator[str]:
    """``itopctl serve`` on a free port (tokens and one trusted proxy configured); its URL."""
    log = sqlite_project.root / "serve.log"
    server = spawn(sqlite_project, "serve", "--listen", "127.0.0.1:0", "--trusted-proxies", NOT_A_PROXY,
                   "--tokens-file", str(sqlite_project.root / "tokens"), log=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        url = ""
        while not url and time.monotonic() < deadline and server.poll() is None:
            for line in log.read_text().splitlines():
                if line.startswith("itopctl serve: http://"):
                    url = line.split()[2]
            time.sleep(0.05)
        assert url, f"itopctl serve did not start: {log.read_text()}"
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def text(driver: Any, css: str) -> str:
    """The element's text; found again if the live update replaced the board in between."""
    for _ in range(20):
        try:
            return str(driver.find_element(By.CSS_SELECTOR, css).text)
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} kept being replaced")


def wait_for(driver: Any, condition: Any, timeout: float = 30) -> Any:
    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition)


def forged_post(driver: Any, action: str, fields: dict[str, str]) -> None:
    """Submit a form the page did not offer (what a script or another site would send), then wait for the answer."""
    driver.execute_script(
        """const [action, fields] = arguments; const form = document.createElement('form');
        form.method = 'post'; form.action = action;
        for (const [name, value] of Object.entries(fields)) {
          const input = document.createElement('input'); input.type = 'hidden'; input.name = name;
          input.value = value; form.appendChild(input);
        }
        document.body.appendChild(form); form.submit();""",
        action,
        fields,
    )
    wait_for(driver, lambda d: d.find_elements(By.ID, "error") or d.find_elements(By.ID, "board"))


def sign_in(driver: Any, url: str, token: str) -> None:
    driver.get(url)
    field = driver.find_element(By.CSS_SELECTOR, "#login input[name=token]")
    field.send_keys(token)
    field.submit()
    wait_for(driver, lambda d: d.find_elements(By.ID, "viewer"))


def sign_out(driver: Any) -> None:
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "login"))


def approve_on_page(driver: Any, release: str, reason: str) -> None:
    form = driver.find_element(By.CSS_SELECTOR, f"#release-{release} form.approve")
    form.find_element(By.NAME, "reason").send_keys(reason)
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(driver, lambda d: "approved r1" in d.find_element(By.TAG_NAME, "body").text)


def approvals(project: Project) -> list[tuple[str, str]]:
    with project.store() as store:
        return [(a.stage, a.approver) for a in store.approvals("r1")]


def test_board_in_a_browser(sqlite_project: Project, board: str, browser: Any, tmp_path: Path) -> None:
    project, url = sqlite_project, board
    project.add("r1")
    assert project.run("deploy", "r1").code == 0
    backdate(project, "dev", 2)  # test's soak gate: 1h
    assert project.run("promote", "r1", "--to", "test").code == 0
    tokens = {
        user: project.run("serve", "--tokens-file", str(project.root / "tokens"), "--add-token", user).out.strip()
        for user in ("bob", "carol")
    }

    # the stages after the promotions, side by side
    browser.get(url)
    assert text(browser, "#stage-dev .current") == "r1" and text(browser, "#stage-test .current") == "r1"
    assert text(browser, "#stage-test .health") == "healthy" and "never deployed" in text(browser, "#stage-prod")
    assert "2 of 2 missing for prod" in text(browser, "#release-r1")
    assert "approvals: 0 of 2 approval(s) for prod" in text(browser, "#release-r1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history tr.deployment")) == 2
    assert "prepare: 1 host(s)" in text(browser, "#history")  # the run logs' summaries

    # refused: an approve without signing in (the page offers none; a forged form carries the session's CSRF token)
    assert not browser.find_elements(By.CSS_SELECTOR, "form.approve")
    csrf = browser.find_element(By.CSS_SELECTOR, "#login input[name=csrf_token]").get_attribute("value")
    forged_post(browser, "/approve", {"release": "r1", "stage": "prod", "reason": "x", "csrf_token": csrf})
    assert "sign in first" in text(browser, "#error")
    # refused: a user header from an address that is not a configured proxy
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"X-Forwarded-User": "mallory"}})
    browser.get(url)
    assert "not a trusted proxy: ignored" in text(browser, "#identity-problem")
    assert not browser.find_elements(By.ID, "viewer")
    csrf = browser.find_element(By.CSS_SELECTOR, "#login input[name=csrf_token]").get_attribute("value")
    forged_post(browser, "/approve", {"release": "r1", "stage": "prod", "reason": "x", "csrf_token": csrf})
    assert "is not a trusted proxy" in text(browser, "#error")
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    # refused: a signed-in user's approve without the CSRF token
    sign_in(browser, url, tokens["bob"])
    assert text(browser, "#viewer") == "bob"
    form = browser.find_element(By.CSS_SELECTOR, "#release-r1 form.approve")
    browser.execute_script("arguments[0].querySelector('input[name=csrf_token]').remove()", form)
    form.find_element(By.NAME, "reason").send_keys("no token")
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "error"))
    assert "CSRF token is missing" in text(browser, "#error")
    assert approvals(project) == []

    # approvals given on the page, by bob then carol: `itopctl promote --check` sees them
    browser.get(url)
    approve_on_page(browser, "r1", "pprd <b>green</b>")
    assert "1 of 2 missing for prod" in text(browser, "#release-r1")
    sign_out(browser)
    sign_in(browser, url, tokens["carol"])
    approve_on_page(browser, "r1", "signed off")
    assert approvals(project) == [("prod", "bob"), ("prod", "carol")]
    check = project.run("promote", "r1", "--to", "prod", "--check", user="alice")
    assert check.code == ExitCode.OK and "gate approvals: ok - 2 of 2 approval(s) for prod (bob, carol)" in check.out
    assert "ready" in text(browser, "#release-r1 .verdict")
    # a reason holding HTML is shown as text (an approval's, and a rejection's given on the page)
    assert text(browser, "#release-r1 .approval .reason") == "pprd <b>green</b>"
    project.add("r2")
    browser.get(url)
    evil = '<img src=x onerror="document.title=1"><b>never</b>'
    form = browser.find_element(By.CSS_SELECTOR, "#release-r2 form.reject")
    form.find_element(By.NAME, "reason").send_keys(evil)
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "rejected"))
    assert text(browser, "#rejected .reason") == evil
    assert not browser.find_elements(By.CSS_SELECTOR, "#rejected b, #rejected img, .approval b")
    assert browser.title == "itopctl board"
    actions = text(browser, "#actions")
    assert "carol token 127.0.0.1 approve r1 prod signed off approved" in actions and "reject r2" in actions

    # live: the page follows a promotion while it runs, without being reloaded
    browser.execute_script("window.sameLoad = true")
    project.marker("slow-prepare", "3")
    promotion = spawn(project, "promote", "r1", "--to", "prod", log=tmp_path / "promote.log")
    try:
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#stage-prod .running-now"))
        assert "prepare" in text(browser, "#stage-prod .running-now .phase")
        assert "alice (deploy): promote r1" in text(browser, "#stage-prod .lock")
        screenshot(browser, tmp_path / "board.png")  # the board while prod is being promoted
        wait_for(browser, lambda d: "r1" in d.find_element(By.CSS_SELECTOR, "#stage-prod .current").text, 60)
    finally:
        assert promotion.wait(timeout=60) == 0, (tmp_path / "promote.log").read_text()
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#stage-prod .health").text == "healthy")
    assert browser.execute_script("return window.sameLoad") is True
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.CSS_SELECTOR, "#stage-prod .running-now")
    assert "2 approval(s)" in text(browser, "#stage-prod")
    assert "3 host(s)" in text(browser, "#history tr.deployment")  # prod's, the newest


def screenshot(driver: Any, path: Path) -> None:
    """The whole page (the README shows a copy: docs/board.png)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    metrics = {"width": 1400, "height": min(height, 2400), "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert path.stat().st_size > 10_000
    if os.environ.get("UNISTRA_ITOP_BOARD_PNG"):
        shutil.copyfile(path, os.environ["UNISTRA_ITOP_BOARD_PNG"])
