"""Who may do what from Slack: a YAML policy file, default deny.

    read_only_for_everyone: true    # status, list, logs for every workspace member (false: grants only)
    reply_in_channel: []            # actions whose replies the channel sees; others are ephemeral
    grants:
      - name: ml-oncall
        usergroups: [S0MLONCALL]    # Slack user group ids (membership read with the bot token)
        users: [U0ALICE]            # Slack user ids
        pipelines: ["*"]            # names or shell-style patterns
        actions: [run, retry, status, list, logs, approve]

`run`, `retry` and `approve` (answering the quality gate: the Approve / Reject buttons and `/mlops
approve|reject`) are allowed only by a grant that names them; `help` is always allowed. A missing or
broken policy file refuses everything (and says why in the log), it never falls back to "allow".
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlbatch.slack_commands.commands import READ_ONLY_ACTIONS

Action = Literal["run", "retry", "status", "list", "logs", "approve"]


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file and the field."""


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    users: list[str] = []
    usergroups: list[str] = []
    pipelines: list[str] = Field(min_length=1)
    actions: list[Action] = Field(min_length=1)

    def has_member(self, actor: Actor) -> bool:
        return actor.user_id in self.users or bool(actor.usergroups & set(self.usergroups))

    def covers(self, actor: Actor, action: str, pipeline: str) -> bool:
        return (self.has_member(actor) and action in self.actions
                and any(fnmatch.fnmatchcase(pipeline, pattern) for pattern in self.pipelines))


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    read_only_for_everyone: bool = False
    reply_in_channel: list[Action] = []
    grants: list[Grant] = []

    @property
    def usergroup_ids(self) -> set[str]:
        return {g for grant in self.grants for g in grant.usergroups}

    def allows(self, actor: Actor, action: str, pipeline: str) -> bool:
        if action == "help":
            return True
        if action in READ_ONLY_ACTIONS and self.read_only_for_everyone:
            return True
        return any(grant.covers(actor, action, pipeline) for grant in self.grants)

    def allows_somewhere(self, actor: Actor, action: str) -> bool:
        """Whether some grant (or read-only-for-everyone) lets the actor do `action` on some pipeline."""
        if action == "help" or (action in READ_ONLY_ACTIONS and self.read_only_for_everyone):
            return True
        return any(grant.has_member(actor) and action in grant.actions for grant in self.grants)

    def ephemeral(self, action: str) -> bool:
        return action not in self.reply_in_channel


DENY_ALL = Policy()


@dataclass(frozen=True)
class Actor:
    """The Slack user behind a request, with the policy's user groups they belong to."""

    user_id: str
    user_name: str = ""
    team_id: str = ""
    usergroups: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return f"{self.user_name} ({self.user_id})" if self.user_name else self.user_id


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read the Slack command policy: {exc}") from None
    try:
        return Policy.model_validate(document or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<document>'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: invalid Slack command policy: {problems}") from None
