"""The three pages in headless Chromium, several people at once (SPEC §3, §4)."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from tests.browser.actors import Account, login_actor, unique_email
from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    ROOT,
    Browsers,
    Site,
    SiteFactory,
    log_in,
    no_horizontal_scroll,
    screenshot,
)

pytestmark = pytest.mark.browser

DOCS_SHOT = ROOT / "docs" / "user-waiting.png"
DOCS_SHOT_MAX_BYTES = 100_000


def messages(page: Page):  # type: ignore[no-untyped-def]
    """The polite log of what happened; it keeps the last few lines."""
    return page.get_by_role("log", name="Messages")


async def go_online(console: Page) -> None:
    await console.get_by_role("radio", name="Online").check()
    await expect(console.get_by_text("Current status: Online")).to_be_visible()


async def go_offline(console: Page) -> None:
    await console.get_by_role("radio", name="Offline").check()
    await expect(console.get_by_text("Current status: Offline")).to_be_visible()


def table_row(admin: Page, name: str):  # type: ignore[no-untyped-def]
    table = admin.get_by_role("table", name="Astrologers")
    return table.get_by_role("row").filter(has=admin.get_by_role("rowheader", name=re.compile(re.escape(name))))


# Column order of the admin table after the row header (the name).
STATUS_CELL, ASSIGNED_CELL = 0, 5


async def test_user_and_astrologer_complete_a_consultation(site: Site, pages: Browsers) -> None:
    asha, uma = "Asha Rao", "Uma Iyer"
    astrologer = await site.api.create_astrologer(site.admin_token, asha, languages=["en", "hi"])

    console = await pages.open("/console")
    await log_in(console, astrologer)
    await go_online(console)

    user = await pages.open("/", PHONE)
    await user.get_by_role("button", name="New here? Create an account").click()
    await user.get_by_label("Your name").fill(uma)
    await user.get_by_label("Email").fill(unique_email("uma"))
    await user.get_by_label("Password").fill("a long enough password")
    await user.get_by_role("button", name="Create account").click()
    await expect(user.get_by_role("heading", name="Ask for a consultation")).to_be_visible()
    await expect(user.get_by_role("status", name="Connection")).to_have_text("Connected")

    choice = user.get_by_role("radio", name=asha)
    await expect(choice).to_be_enabled()
    await choice.check()
    await user.get_by_role("radio", name="Chat").check()
    await user.get_by_role("button", name="Join the line").click()

    offer = console.get_by_role("listitem").filter(has=console.get_by_role("heading", name=f"Chat request from {uma}"))
    await expect(offer).to_be_visible()
    await expect(offer.get_by_text(re.compile(r"Answer within \d+ s"))).to_be_visible()
    await expect(offer.get_by_text("Asked for you by name.")).to_be_visible()
    await screenshot(console, "console-offer")
    await offer.get_by_role("button", name=f"Accept chat from {uma}").click()

    connected = user.get_by_role("region", name="You are connected")
    await expect(connected).to_be_visible()
    await expect(connected).to_contain_text(f"Your chat with {asha} has started.")
    session = console.get_by_role("listitem").filter(has=console.get_by_role("heading", name=f"Chat with {uma}"))
    await expect(session).to_be_visible()
    await expect(offer).to_have_count(0)
    await screenshot(user, "user-session")
    await screenshot(console, "console-session")

    await user.get_by_role("button", name="End session").click()
    await expect(messages(user)).to_contain_text("You ended the session.")
    await expect(user.get_by_role("heading", name="Ask for a consultation")).to_be_visible()
    await expect(messages(console)).to_contain_text(f"{uma} ended the session.")
    await expect(session).to_have_count(0)
    await expect(console.get_by_text("No sessions right now.")).to_be_visible()

    await go_offline(console)
    pages.assert_clean()


async def test_top_flow_off_sends_a_general_request_to_a_regular_astrologer(
    site: Site, pages: Browsers
) -> None:
    tara, nia, leo = "Tara Singh", "Nia Okafor", "Leo Marsh"
    top = await site.api.create_astrologer(site.admin_token, tara, is_top=True)
    regular = await site.api.create_astrologer(site.admin_token, nia)
    leo_account = await site.api.register_user(leo)
    await set_top_flow(site, "on")
    try:
        admin = await pages.open("/admin")
        await log_in(admin, site.admin)
        nia_row, tara_row = table_row(admin, nia), table_row(admin, tara)
        await expect(nia_row.get_by_role("cell").nth(STATUS_CELL)).to_have_text("Offline")
        await expect(tara_row.get_by_role("checkbox", name=f"Top astrologer: {tara}")).to_be_checked()

        await admin.get_by_role("radio", name="Off").check()
        await expect(messages(admin)).to_contain_text("Top flow is off")

        consoles: dict[str, Page] = {}
        for astrologer in (top, regular):
            consoles[astrologer.name] = page = await pages.open("/console")
            await log_in(page, astrologer)
            await go_online(page)
        # The admin table follows the stats frames without a reload.
        await expect(nia_row.get_by_role("cell").nth(STATUS_CELL)).to_have_text("Online")
        await expect(tara_row.get_by_role("cell").nth(STATUS_CELL)).to_have_text("Online")

        user = await pages.open("/")
        await log_in(user, leo_account)
        await expect(user.get_by_role("radio", name="Any astrologer")).to_be_checked()
        await user.get_by_role("button", name="Join the line").click()

        nia_console, tara_console = consoles[nia], consoles[tara]
        accept = nia_console.get_by_role("button", name=f"Accept chat from {leo}")
        await expect(accept).to_be_visible()
        await expect(nia_console.get_by_text("From the general line.")).to_be_visible()
        await expect(tara_console.get_by_text("No offers right now.")).to_be_visible()
        await accept.click()

        await expect(user.get_by_role("region", name="You are connected")).to_contain_text(nia)
        await expect(nia_row.get_by_role("cell").nth(ASSIGNED_CELL)).to_have_text("1")
        await expect(tara_row.get_by_role("cell").nth(ASSIGNED_CELL)).to_have_text("0")
        await screenshot(admin, "admin-live")

        await admin.get_by_role("radio", name="On", exact=True).check()
        await expect(messages(admin)).to_contain_text("Top flow is on.")
        await nia_console.get_by_role("button", name=f"End session with {leo}").click()
        await expect(messages(user)).to_contain_text(f"{nia} ended the session.")
        for page in consoles.values():
            await go_offline(page)
    finally:
        await set_top_flow(site, "on")
    pages.assert_clean()


async def set_top_flow(site: Site, top_flow: str) -> None:
    await site.api.call("PUT", "/api/v1/admin/flow", {"top_flow": top_flow}, token=site.admin_token)


async def test_reload_while_waiting_resumes_the_same_place(site: Site, pages: Browsers) -> None:
    orion, rhea = "Orion Vale", "Rhea Kapoor"
    # An astrologer on break keeps a line without taking offers, so it stays put.
    account = await site.api.create_astrologer(site.admin_token, orion)
    astrologer = await login_actor(site.api, account)
    await astrologer.call({"type": "status", "status": "break"})
    ahead = []
    for person in ("Ada Brook", "Ben Hale"):
        actor = await login_actor(site.api, await site.api.register_user(person))
        ack = await actor.call({"type": "request", "kind": "chat", "astrologer_id": account.id})
        ahead.append((actor, ack["request_id"]))
    rhea_account = await site.api.register_user(rhea)

    try:
        user = await pages.open("/", PHONE)
        await log_in(user, rhea_account)
        choice = user.get_by_role("radio", name=orion)
        await expect(choice).to_be_enabled()
        await expect(user.get_by_text("On a break · 2 waiting")).to_be_visible()
        await choice.check()
        await user.get_by_role("radio", name="Call").check()
        await user.get_by_role("button", name="Join the line").click()

        position = user.get_by_label("Position in line")
        eta = user.get_by_label("Estimated wait")
        await expect(position).to_have_text("3")
        await expect(eta).to_have_text("Waiting for an astrologer to come online")
        await expect(user.get_by_text(f"Call with {orion}.")).to_be_visible()
        await write_docs_screenshot(user)

        await user.reload()
        await expect(user.get_by_role("heading", name="You are in line")).to_be_visible()
        await expect(position).to_have_text("3")
        await expect(eta).to_have_text("Waiting for an astrologer to come online")
        await expect(user.get_by_text(f"Call with {orion}.")).to_be_visible()
        # Still one request of Rhea's: the line holds three, not four.
        listed = await site.api.call("GET", "/api/v1/astrologers", token=site.admin_token)
        assert [a["waiting"] for a in listed["astrologers"] if a["id"] == account.id] == [3]

        # The line moves and the page follows without a reload.
        first, first_request = ahead[0]
        await first.call({"type": "cancel", "request_id": first_request})
        await expect(position).to_have_text("2")

        await user.get_by_role("button", name="Cancel request").click()
        await expect(messages(user)).to_contain_text("You cancelled your request.")
        await expect(user.get_by_role("heading", name="Ask for a consultation")).to_be_visible()
    finally:
        second, second_request = ahead[1]
        await second.call({"type": "cancel", "request_id": second_request})
        for actor, _ in ahead:
            await actor.close()
        await astrologer.call({"type": "status", "status": "offline"})
        await astrologer.close()
    pages.assert_clean()


async def write_docs_screenshot(page: Page) -> None:
    """The docs' picture of the user page in line; kept small for the repository."""
    DOCS_SHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(DOCS_SHOT), full_page=False, scale="css")
    assert DOCS_SHOT.stat().st_size <= DOCS_SHOT_MAX_BYTES


async def test_a_dropped_connection_reconnects_and_keeps_the_request(site: Site, pages: Browsers) -> None:
    vega, sam = "Vega Moreau", "Sam Ortiz"
    account = await site.api.create_astrologer(site.admin_token, vega)
    astrologer = await login_actor(site.api, account)
    await astrologer.call({"type": "status", "status": "break"})
    sam_account = await site.api.register_user(sam)
    try:
        user = await pages.open("/", navigate=False)
        # Every /ws connection goes through this route, so the test can cut it
        # the way a dropped network would, and refuse reconnects for a while.
        network = {"up": True}
        links: list[tuple[WebSocketRoute, WebSocketRoute]] = []

        async def route(ws: WebSocketRoute) -> None:
            if not network["up"]:
                await ws.close(code=4000, reason="network down")
                return
            links.append((ws, ws.connect_to_server()))

        await user.route_web_socket(re.compile(r"/ws$"), route)
        await user.goto("/")
        await log_in(user, sam_account)
        await user.get_by_role("radio", name=vega).check()
        await user.get_by_role("button", name="Join the line").click()
        await expect(user.get_by_label("Position in line")).to_have_text("1")

        connection = user.get_by_role("status", name="Connection")
        network["up"] = False
        page_side, server_side = links[-1]
        await page_side.close(code=4000, reason="network down")
        await server_side.close()
        await expect(connection).to_have_text(re.compile(r"Connection lost; retrying in \d+ s"))
        await expect(user.get_by_role("heading", name="You are in line")).to_be_visible()
        network["up"] = True
        await expect(connection).to_have_text("Connected", timeout=20_000)
        assert len(links) >= 2
        await expect(user.get_by_label("Position in line")).to_have_text("1")
        await user.get_by_role("button", name="Cancel request").click()
        await expect(messages(user)).to_contain_text("You cancelled your request.")
    finally:
        await astrologer.call({"type": "status", "status": "offline"})
        await astrologer.close()
    pages.assert_clean()


async def test_every_page_fits_a_phone_and_logs_no_errors(site: Site, pages: Browsers) -> None:
    cleo = "Cleo Park"
    astrologer = await site.api.create_astrologer(site.admin_token, cleo, is_top=True, languages=["en"])
    user = await site.api.register_user("Pia Sorensen")
    people: dict[str, tuple[str, Account]] = {
        "/": ("user", user),
        "/console": ("console", astrologer),
        "/admin": ("admin", site.admin),
    }
    for path, (name, account) in people.items():
        page = await pages.open(path, PHONE)
        await expect(page.get_by_role("button", name="Log in")).to_be_visible()
        await no_horizontal_scroll(page)
        await screenshot(page, f"{name}-login-phone")
        await log_in(page, account)
        if path == "/":
            await expect(page.get_by_role("radio", name=cleo)).to_be_attached()
        if path == "/admin":
            await expect(table_row(page, cleo)).to_be_visible()
            await expect(page.get_by_role("img", name=re.compile("Waiting users"))).to_be_visible()
        await no_horizontal_scroll(page)
        await screenshot(page, f"{name}-phone")
        await page.set_viewport_size(DESKTOP)
        await screenshot(page, f"{name}-desktop")
    pages.assert_clean()


async def test_keyboard_alone_joins_and_leaves_the_line(site: Site, pages: Browsers) -> None:
    kai = await site.api.register_user("Kai Moana")
    user = await pages.open("/")

    await user.get_by_label("Email").fill(kai.email)
    await user.get_by_label("Password").fill("not the password")
    await user.keyboard.press("Enter")
    await expect(user.get_by_role("alert")).to_have_text("Wrong email or password.")
    pages.take_expected(r"status of 401")

    await user.get_by_label("Password").fill(kai.password)
    await user.keyboard.press("Enter")
    await expect(user.get_by_role("status", name="Connection")).to_have_text("Connected")
    await expect(user.get_by_role("alert")).to_be_hidden()

    await user.get_by_role("radio", name="Chat").focus()
    await user.keyboard.press("ArrowRight")
    await expect(user.get_by_role("radio", name="Call")).to_be_checked()
    await user.keyboard.press("Tab")
    await expect(user.get_by_role("radio", name="Any astrologer")).to_be_focused()
    await user.keyboard.press("Tab")
    await expect(user.get_by_role("button", name="Join the line")).to_be_focused()
    await user.keyboard.press("Enter")
    await expect(user.get_by_role("heading", name="You are in line")).to_be_focused()
    await user.keyboard.press("Tab")
    await expect(user.get_by_role("button", name="Cancel request")).to_be_focused()
    await user.keyboard.press("Enter")
    await expect(messages(user)).to_contain_text("You cancelled your request.")
    await expect(user.get_by_role("heading", name="Ask for a consultation")).to_be_focused()
    pages.assert_clean()


async def test_server_errors_are_shown_in_words(site: Site, pages: Browsers) -> None:
    zed = "Zed Ali"
    await site.api.create_astrologer(site.admin_token, zed)
    admin = await pages.open("/admin")
    await log_in(admin, site.admin)
    weight = admin.get_by_role("spinbutton", name=f"Weight for {zed}")
    await weight.fill("0")
    await weight.press("Enter")
    alert = admin.get_by_role("alert")
    await expect(alert).to_be_visible()
    await expect(alert).not_to_have_text(re.compile(r"^\s*$"))
    pages.take_expected(r"status of 422")

    create = admin.get_by_role("form", name="Add an astrologer")
    await create.get_by_label("Name").fill("Dana Twice")
    await create.get_by_label("Email").fill(site.admin.email)
    await create.get_by_label("Password").fill("long enough password")
    await create.get_by_role("button", name="Create astrologer").click()
    await expect(alert).to_have_text("That email is already registered.")
    pages.take_expected(r"status of 409")
    pages.assert_clean()


async def test_declines_and_withdrawn_offers_are_explained(site: Site, pages: Browsers) -> None:
    lyra, mia, noor = "Lyra Bell", "Mia Lund", "Noor Haddad"
    account = await site.api.create_astrologer(site.admin_token, lyra)
    console = await pages.open("/console")
    await log_in(console, account)
    await go_online(console)

    user = await pages.open("/")
    await log_in(user, await site.api.register_user(mia))
    await user.get_by_role("radio", name=lyra).check()
    await user.get_by_role("button", name="Join the line").click()
    await console.get_by_role("button", name=f"Decline chat from {mia}").click()
    await expect(messages(console)).to_contain_text(f"You declined the request from {mia}.")
    # A declined direct request ends (SPEC §5) and the user is told why.
    await expect(messages(user)).to_contain_text("The astrologer declined your request.")
    await expect(user.get_by_role("heading", name="Ask for a consultation")).to_be_visible()

    other = await login_actor(site.api, await site.api.register_user(noor))
    try:
        ack = await other.call({"type": "request", "kind": "call", "astrologer_id": account.id})
        offer = console.get_by_role("listitem").filter(has=console.get_by_role("heading", name=f"Call request from {noor}"))
        await expect(offer).to_be_visible()
        await expect(console.get_by_label("Waiting for you")).to_have_text("0")
        await other.call({"type": "cancel", "request_id": ack["request_id"]})
        await expect(messages(console)).to_contain_text(f"{noor} cancelled the request; the offer was withdrawn.")
        await expect(offer).to_have_count(0)
        await expect(console.get_by_text("No offers right now.")).to_be_visible()
    finally:
        await other.close()
    await go_offline(console)
    pages.assert_clean()


async def test_tokens_are_refreshed_before_expiry_and_after_a_rejected_socket(
    site: Site, pages: Browsers
) -> None:
    ivy = await site.api.register_user("Ivy Chen")
    user = await pages.open("/")
    await log_in(user, ivy)

    async def tamper(script: str) -> str:
        token: str = await user.evaluate(
            """(script) => {
                const key = "astroq.user.auth";
                const data = JSON.parse(localStorage.getItem(key));
                new Function("data", script)(data);
                localStorage.setItem(key, JSON.stringify(data));
                return data.access_token;
            }""",
            script,
        )
        return token

    # About to expire: the page swaps tokens before it uses them, so the server
    # never sees the stale one (no 401 anywhere).
    stale = await tamper("data.access_token = 'stale'; data.expires_at = Date.now() + 1000;")
    await user.reload()
    await expect(user.get_by_role("status", name="Connection")).to_have_text("Connected")
    assert await tamper("") != stale
    pages.assert_clean()

    # Rejected although not expired: the socket closes with 4401, the page
    # refreshes and reconnects on its own.
    await tamper("data.access_token = 'not-a-token';")
    await user.reload()
    await expect(user.get_by_role("status", name="Connection")).to_have_text("Connected")
    await expect(user.get_by_role("button", name="Log out")).to_be_visible()
    assert await tamper("") != "not-a-token"
    pages.take_expected(r"status of 401")
    pages.assert_clean()


async def test_the_admin_page_refuses_other_roles(site: Site, pages: Browsers) -> None:
    user = await site.api.register_user("Olive Grant")
    admin = await pages.open("/admin")
    form = admin.get_by_role("form", name="Admin")
    await form.get_by_label("Email").fill(user.email)
    await form.get_by_label("Password").fill(user.password)
    await form.get_by_role("button", name="Log in").click()
    await expect(admin.get_by_role("alert")).to_have_text("This page is for admins. Log in with an admin account.")
    await expect(admin.get_by_role("button", name="Log out")).to_be_hidden()
    pages.assert_clean()


async def test_missed_offers_put_the_console_on_break_with_a_notice(
    site_factory: SiteFactory, pages: Browsers
) -> None:
    site = await site_factory(offer_timeout_s=1.0, max_missed=2)
    rigel = "Rigel Stone"
    account = await site.api.create_astrologer(site.admin_token, rigel)
    console = await pages.open("/console")
    await log_in(console, account)
    await go_online(console)

    people = []
    try:
        for person in ("Tess Ward", "Ugo Bassi"):
            actor = await login_actor(site.api, await site.api.register_user(person))
            people.append(actor)
            await actor.call({"type": "request", "kind": "chat", "astrologer_id": account.id})
            await expect(console.get_by_role("heading", name=f"Chat request from {person}")).to_be_visible()
            await expect(messages(console)).to_contain_text(f"request from {person} expired")
            # An unanswered direct request ends for its user as a timeout (SPEC §5).
            cancelled = await actor.next(lambda f: f["type"] == "cancelled")
            assert cancelled["reason"] == "timeout"
        await expect(console.get_by_text("Current status: On break")).to_be_visible()
        await expect(console.get_by_role("radio", name="On break")).to_be_checked()
        await expect(console.get_by_text(re.compile("You missed several offers in a row"))).to_be_visible()
        await screenshot(console, "console-missed-offers")
    finally:
        for actor in people:
            await actor.close()
    pages.assert_clean()
