"""Headless Chromium (Debian's, never a downloaded one) against the live service.

Each test opens as many browser contexts as it has people; every page's
console errors and uncaught exceptions are collected, and a test fails when
any are left that it did not expect.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from tests.browser.actors import Account, Api
from tests.harness import Service

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output"
PHONE: ViewportSize = {"width": 375, "height": 780}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}

expect.set_options(timeout=10_000)


@dataclass
class Site:
    """What a browser test needs of the live service."""

    base_url: str
    admin: Account
    admin_token: str
    api: Api


@dataclass
class Problem:
    page: str
    kind: str
    text: str


@dataclass
class Browsers:
    """Opens pages in fresh contexts and remembers what went wrong in them."""

    browser: Browser
    base_url: str
    problems: list[Problem] = field(default_factory=list)
    contexts: list[BrowserContext] = field(default_factory=list)

    async def open(self, path: str, viewport: ViewportSize | None = None, navigate: bool = True) -> Page:
        """A page in a new context (its own localStorage: one person); `navigate=False` leaves it blank."""
        context = await self.browser.new_context(
            base_url=self.base_url, viewport=viewport or DESKTOP, reduced_motion="reduce"
        )
        self.contexts.append(context)
        page = await context.new_page()
        label = path

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.problems.append(Problem(label, "console", message.text))

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.problems.append(Problem(label, "pageerror", str(error))))
        if navigate:
            await page.goto(path)
        return page

    def take_expected(self, pattern: str) -> None:
        """Forgets console errors a test caused on purpose (a 401 from a wrong password)."""
        self.problems = [p for p in self.problems if not re.search(pattern, p.text)]

    def assert_clean(self) -> None:
        assert not self.problems, "\n".join(f"{p.page}: {p.kind}: {p.text}" for p in self.problems)

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()
        self.contexts.clear()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def pages(browser: Browser) -> AsyncIterator[Browsers]:
    """Pages open against the service the test started last (see site_factory)."""
    opened = Browsers(browser, "")
    try:
        yield opened
    finally:
        await opened.close()


async def screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def log_in(page: Page, account: Account) -> None:
    """Logs in through the page's own form, as a person would."""
    form = page.get_by_role("form").filter(has=page.get_by_role("button", name="Log in"))
    await form.get_by_label("Email").fill(account.email)
    await form.get_by_label("Password").fill(account.password)
    await form.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("button", name="Log out")).to_be_visible()
    await expect(page.get_by_role("status", name="Connection")).to_have_text("Connected")


async def no_horizontal_scroll(page: Page) -> None:
    widths: list[int] = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"page is {widths[0]}px wide in a {widths[1]}px viewport"


# People in a browser are slower than test clients: give them time to read an
# offer and let a reload or a dropped connection come back within the grace.
BROWSER_TIMINGS: dict[str, Any] = {"offer_timeout_s": 10.0, "reconnect_grace_s": 10.0}

SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
def site_factory(service_factory: Callable[..., Awaitable[Service]], pages: Browsers) -> SiteFactory:
    """A fresh live service (its own schema and Redis prefix) with browser timings and overrides."""

    async def start(**overrides: Any) -> Site:
        service = await service_factory(**{**BROWSER_TIMINGS, **overrides})
        assert service.admin is not None
        admin = service.admin
        pages.base_url = service.base_url
        return Site(
            service.base_url,
            Account(admin.id, admin.email, admin.password, admin.name, admin.role),
            admin.token,
            Api(service.base_url),
        )

    return start


@pytest.fixture
async def site(site_factory: SiteFactory) -> Site:
    return await site_factory()
