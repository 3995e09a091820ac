"""Every Redis key and channel name astroq uses, in one place.

All live match state of a deployment shares one hash tag, `{m}`, because a
matching decision must see lines, requests and astrologers in one atomic step:
each Lua script then touches a single hash slot, so the same code runs on Redis
Cluster (the match slot lives on one node; per-client queues, login counters
and pub/sub spread over the others). Lua scripts derive the keys of one slot
from the slot's base key, `Keys.match`, passed as KEYS[1]; the names they build
are listed in matcher/lua/lib.lua and mirror the functions below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "astroq"

    # ---- the match slot -------------------------------------------------
    @property
    def match(self) -> str:
        """Base key of the match slot; Lua appends ':<name>' to it."""
        return f"{self.prefix}:{{m}}"

    def m(self, name: str) -> str:
        return f"{self.match}:{name}"

    @property
    def outbox(self) -> str:
        return self.m("outbox")

    @property
    def alive(self) -> str:
        return self.m("alive")

    @property
    def lease(self) -> str:
        return self.m("lease")

    @property
    def fence(self) -> str:
        return self.m("fence")

    @property
    def flow(self) -> str:
        return self.m("flow")

    @property
    def config(self) -> str:
        """Bumped by every admin change to live state; a rebuild watches it."""
        return self.m("config")

    @property
    def online(self) -> str:
        return self.m("online")

    @property
    def astrologers(self) -> str:
        return self.m("asts")

    @property
    def general_line(self) -> str:
        return self.m("line:general")

    def direct_line(self, astrologer_id: str) -> str:
        return self.m(f"line:{astrologer_id}")

    def astrologer(self, astrologer_id: str) -> str:
        return self.m(f"ast:{astrologer_id}")

    def request(self, request_id: str) -> str:
        return self.m(f"req:{request_id}")

    def user(self, user_id: str) -> str:
        return self.m(f"user:{user_id}")

    @property
    def gateways(self) -> str:
        return self.m("gws")

    def gateway_alive(self, gateway_id: str) -> str:
        return self.m(f"gw:{gateway_id}")

    def gateway_sockets(self, gateway_id: str) -> str:
        return self.m(f"gwsocks:{gateway_id}")

    # ---- per-client slots -------------------------------------------------
    def client_queue(self, user_id: str) -> str:
        """A client's own frame queue; its lock shares the slot."""
        return f"{self.prefix}:{{c:{user_id}}}:q"

    def client_lock(self, user_id: str) -> str:
        return f"{self.prefix}:{{c:{user_id}}}:lock"

    def login_email(self, email: str) -> str:
        return f"{self.prefix}:{{login:{email}}}:fails"

    def login_address(self, address: str) -> str:
        return f"{self.prefix}:{{login-ip:{address}}}:fails"

    # ---- pub/sub ----------------------------------------------------------
    def events(self, user_id: str) -> str:
        """Frames for every socket of one account, whichever gateway holds it."""
        return f"{self.prefix}:ev:{user_id}"

    @property
    def admin_events(self) -> str:
        return f"{self.prefix}:ev:admins"
