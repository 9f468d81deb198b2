"""Headless Chromium for the console's screenshots and its browser test, and the child processes around it.

Debian's chromium and chromium-driver (scripts/apt-deps.sh installs them); Selenium is pointed at the system
chromedriver, so it never tries to download one.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` until true; raise TimeoutError after ``timeout`` seconds saying what did not happen."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` as a child process logging to ``log``; SIGTERM (then SIGKILL) on exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900, *, hide_scrollbars: bool = False) -> Iterator[WebDriver]:
    """A headless Chromium window of ``width`` x ``height``, quit on exit."""
    if not (shutil.which(CHROMIUM) and Path(CHROMEDRIVER).exists()):
        raise FileNotFoundError("chromium and chromium-driver are not installed: scripts/apt-deps.sh installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
    args.append(f"--window-size={width},{height}")
    if hide_scrollbars:
        args.append("--hide-scrollbars")
    for arg in args:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
