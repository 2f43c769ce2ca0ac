"""Which of the policy's Slack user groups a user is in (`usergroups.users.list`, bot scope
`usergroups:read`), cached for a few minutes so a burst of commands costs one lookup per group.

Slack does not send group membership with a command. A lookup that fails counts as "not a member"
(deny) and is logged; it is not cached, so the next command asks again.

The lookup must not land on a command's acknowledgement (Slack's 3 seconds): the cache is filled when
the app is built (`prefetch`), and an entry past its time is still used for up to one more period while
a background lookup refreshes it (a membership change shows within two periods); an entry older than
that is looked up again before answering, as is a group never seen.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


class UsergroupDirectory:
    def __init__(self, bot_token: str | None, api_url: str | None = None, ttl_seconds: float = 300):
        self._token, self._api_url, self._ttl = bot_token, api_url, ttl_seconds
        self._members: dict[str, tuple[float, frozenset[str]]] = {}  # group -> (fresh until, members)
        self._lock = asyncio.Lock()
        self._client = None
        self._refreshing: dict[str, asyncio.Task] = {}

    def prefetch(self, group_ids: set[str], timeout: float = 3.0) -> None:
        """Fill the cache now, synchronously (at start-up, before any command), so the first command
        does not wait for Slack. A group that cannot be read is left to the first command."""
        if not group_ids or not self._token:
            return
        from slack_sdk import WebClient

        kwargs = {"base_url": self._api_url} if self._api_url else {}
        client = WebClient(token=self._token, timeout=int(max(1, timeout)), **kwargs)
        for group_id in sorted(group_ids):
            try:
                members = frozenset(client.usergroups_users_list(usergroup=group_id).get("users") or [])
            except Exception as exc:
                log.warning("Slack user group %s: membership not prefetched (%s); the first command looks it up",
                            group_id, exc)
                continue
            self._members[group_id] = (time.monotonic() + self._ttl, members)

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
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        if cached and cached[0] + self._ttl > now:  # past its time, not by a whole period: refresh behind
            if group_id not in self._refreshing:
                task = asyncio.ensure_future(self._lookup(group_id))
                self._refreshing[group_id] = task
                task.add_done_callback(lambda _: self._refreshing.pop(group_id, None))
            return cached[1]
        return await self._lookup(group_id)

    async def _lookup(self, group_id: str) -> frozenset[str]:
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
