"""
Debian's headless Chromium driven by selenium, able to reach 127.0.0.1 and nothing else.

Two locks, each of which alone stops every request of a page in this Chromium (156), so that a
hole in one (an edited rule, a Chromium release that changes how either matches) leaves the other:

- A dead proxy for everything (``--proxy-server`` on a closed 127.0.0.1 port): names, public and
  private IP literals and, since ``--proxy-bypass-list`` starts with ``<-loopback>``, other loopback
  addresses too (Chromium otherwise sends localhost, 127.0.0.0/8 and [::1] around any proxy); only
  127.0.0.1 is bypassed. A fixed proxy never falls back to going direct, so such a request fails at
  once instead of leaving. Chromium's own fetchers (update, time, search preconnect) take the proxy
  too. And the proxy can be watched: put a live one in its place and it sees every request that
  would have left (tests/test_hexo_site.py does), where a resolver rule fails silently.
- ``--host-resolver-rules`` maps every host but 127.0.0.1, IP literals included, to "not found": it
  holds for what an HTTP proxy does not carry (WebRTC's UDP to STUN and TURN hosts) and for a
  request that slips past the proxy, e.g. to 127.0.0.2 if the bypass list lost ``<-loopback>``.

``page_images(driver, url)`` reports the state of every ``<img>`` of a page once it has loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_TIMEOUT = 30.0

# Without the background-networking flags Chromium dials Google's services at every start; on this
# machine's closed network those connections are refused by the dozen.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
    "--proxy-bypass-list=<-loopback>;127.0.0.1",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)

_IMAGES = """
return Array.from(document.images, (img) => [
  img.getAttribute('src'), img.currentSrc, img.complete, img.naturalWidth,
  img.closest('code') !== null,
]);
"""
# An image with loading=lazy below the fold loads only when scrolled near, after the load event.
_EAGER = "for (const img of document.images) if (img.loading === 'lazy') img.loading = 'eager';"
_SETTLED = "return Array.from(document.images).every((img) => img.complete);"


@dataclasses.dataclass(frozen=True)
class ImageState:
    """One ``<img>`` of a loaded page, as the browser sees it."""

    src: str | None  # the src attribute as the HTML wrote it (entities decoded), None if absent
    current_src: str  # the URL the browser chose and fetched (srcset considered), "" if none
    complete: bool  # fetching is over: loaded, broken or no source at all
    natural_width: int  # 0 unless the bytes decoded to an image
    in_code: bool  # inside <code> (which covers <pre><code>); a bare <pre> is not code

    @property
    def loaded(self) -> bool:
        """Tell whether the image was fetched and decoded to real pixels."""
        return self.complete and self.natural_width > 0


def require_chromium() -> None:
    """Skip the test, naming what to install, unless Chromium, chromedriver and selenium exist."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        )
    pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[dev]'")


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """Yield a 127.0.0.1 port that refuses connections: bound, never listening, kept to the end."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def open_browser(profile: Path, proxy_port: int | None = None) -> Iterator[WebDriver]:
    """
    Start a headless Chromium that reaches only 127.0.0.1; quit it when the block ends.

    Args:
        profile: A folder for the fresh user-data-dir and chromedriver's log.
        proxy_port: The proxy on 127.0.0.1 that every other request goes to; by default a
            closed port, so those requests fail. Tests of the blocking pass a live one.

    Returns:
        The selenium driver, with the HTTP cache off so every page load reaches the server.
    """
    from selenium import webdriver

    with contextlib.ExitStack() as stack:
        port = proxy_port if proxy_port is not None else stack.enter_context(closed_port())
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (
            *CHROMIUM_FLAGS,
            f"--proxy-server=http://127.0.0.1:{port}",
            f"--user-data-dir={profile / 'user-data'}",
        ):
            options.add_argument(flag)
        profile.mkdir(parents=True, exist_ok=True)
        # A driver path given means Selenium Manager (which would download drivers) never runs.
        service = webdriver.ChromeService(
            executable_path=str(CHROMEDRIVER), log_output=str(profile / "chromedriver.log")
        )
        driver = webdriver.Chrome(options=options, service=service)
        stack.callback(driver.quit)
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        yield driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """A headless Chromium that can reach 127.0.0.1 only, or a skip naming what is missing."""
    require_chromium()
    with open_browser(tmp_path / "chromium") as driver:
        yield driver


def page_images(driver: WebDriver, url: str, *, timeout: float = PAGE_TIMEOUT) -> list[ImageState]:
    """
    Open ``url`` and report every ``<img>`` once the page and its images have settled.

    Args:
        driver: A driver from :func:`open_browser` or the ``browser`` fixture.
        url: The page to open.
        timeout: Seconds to wait for the load event, then again for lazy images.

    Returns:
        One state per ``<img>`` element, in document order.

    Raises:
        TimeoutError: the page or one of its images did not finish within ``timeout``.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: Any) -> bool:
        return bool(d.execute_script("return document.readyState") == "complete")

    def settled(d: Any) -> bool:
        return bool(d.execute_script(_SETTLED))

    try:
        driver.get(url)  # returns after the load event (page load strategy "normal")
        WebDriverWait(driver, timeout).until(ready)
        driver.execute_script(_EAGER)
        WebDriverWait(driver, timeout).until(settled)
    except TimeoutException as exc:
        raise TimeoutError(f"{url} did not finish loading within {timeout:g} s") from exc
    rows = driver.execute_script(_IMAGES)
    return [
        ImageState(src, current, bool(complete), int(width), bool(in_code))
        for src, current, complete, width, in_code in rows
    ]
