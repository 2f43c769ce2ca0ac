"""Configuration of both front doors, from environment variables (one place, with defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    airflow_api_url: str = "http://localhost:8080"
    airflow_ui_url: str = ""  # links in replies; defaults to airflow_api_url
    airflow_token: str | None = None
    airflow_username: str | None = None
    airflow_password: str | None = None
    policy_path: str = "include/slack_policy.yaml"
    signing_secret: str | None = None  # HTTP front door
    app_token: str | None = None  # Socket Mode front door (xapp-...)
    bot_token: str | None = None  # user-group lookups (usergroups:read); the gate message after `/mlops approve|reject`
    slack_api_url: str | None = None  # None: https://slack.com/api/
    response_url_prefix: str = "https://hooks.slack.com/"
    replay_redis_url: str | None = None
    work_timeout_seconds: float = 60.0
    work_concurrency: int = 2  # commands executed at once after their ack (the rest wait their turn)

    @property
    def links_base(self) -> str:
        return (self.airflow_ui_url or self.airflow_api_url).rstrip("/")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            airflow_api_url=env.get("MLBATCH_AIRFLOW_API_URL", cls.airflow_api_url),
            airflow_ui_url=env.get("MLBATCH_AIRFLOW_UI_URL", ""),
            airflow_token=env.get("MLBATCH_AIRFLOW_TOKEN") or None,
            airflow_username=env.get("MLBATCH_AIRFLOW_USERNAME") or None,
            airflow_password=env.get("MLBATCH_AIRFLOW_PASSWORD") or None,
            policy_path=env.get("MLBATCH_SLACK_POLICY", cls.policy_path),
            signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
            app_token=env.get("SLACK_APP_TOKEN") or None,
            bot_token=env.get("SLACK_BOT_TOKEN") or None,
            slack_api_url=env.get("MLBATCH_SLACK_API_URL") or None,
            response_url_prefix=env.get("MLBATCH_SLACK_RESPONSE_URL_PREFIX", cls.response_url_prefix),
            replay_redis_url=env.get("MLBATCH_SLACK_REPLAY_REDIS_URL") or None,
            work_timeout_seconds=float(env.get("MLBATCH_SLACK_WORK_TIMEOUT_SECONDS", cls.work_timeout_seconds)),
            work_concurrency=max(1, int(env.get("MLBATCH_SLACK_WORK_CONCURRENCY", cls.work_concurrency))),
        )
