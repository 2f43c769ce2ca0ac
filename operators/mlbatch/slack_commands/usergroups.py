"""Which of the policy's Slack user groups a user is in (`usergroups.users.list`, bot scope
`usergroups:read`), cached for a few minutes so a burst of commands costs one lookup per group.

Slack does not send group membership with a command. A lookup that fails counts as "not a member"
(deny) and is logged; it is not cached, so the next command asks again.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


class UsergroupDirectory:
    def __init__(self, bot_token: str | None, api_url: str | None = None, ttl_seconds: float = 300):
        self._token, self._api_url, self._ttl = bot_token, api_url, ttl_seconds
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = asyncio.Lock()
        self._client = None

    async def groups_of(self, user_id: str, group_ids: set[str]) -> frozenset[str]:
        if not group_ids:
            return frozenset()
        if not self._token:
            log.error("The Slack policy names user groups but SLACK_BOT_TOKEN is not set: "
                      "group grants cannot apply")
            return frozenset()
        members = await asyncio.gather(*(self._members_of(g) for g in sorted(group_ids)))
        return frozenset(g for g, m in zip(sorted(group_ids), members) if user_id in m)

    async def _members_of(self, group_id: str) -> frozenset[str]:
        cached = self._members.get(group_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self._lock:
            cached = self._members.get(group_id)
            if cached and cached[0] > time.monotonic():
                return cached[1]
            try:
                response = await self._web_client().usergroups_users_list(usergroup=group_id)
            except Exception as exc:  # a failed lookup must deny, never allow
                log.error("Slack user group %s: membership lookup failed: %s", group_id, exc)
                return frozenset()
            members = frozenset(response.get("users") or [])
            self._members[group_id] = (time.monotonic() + self._ttl, members)
            return members

    def _web_client(self):
        if self._client is None:
            from slack_sdk.web.async_client import AsyncWebClient

            kwargs = {"base_url": self._api_url} if self._api_url else {}
            self._client = AsyncWebClient(token=self._token, **kwargs)
        return self._client
