"""Settings -> a ready router, the same way for both front doors."""

from __future__ import annotations

import logging

from mlbatch.slack_commands.airflow_api import AirflowClient
from mlbatch.slack_commands.policy import DENY_ALL, PolicyError, load_policy
from mlbatch.slack_commands.router import Router
from mlbatch.slack_commands.settings import Settings
from mlbatch.slack_commands.usergroups import UsergroupDirectory

log = logging.getLogger(__name__)


def build_router(settings: Settings) -> Router:
    """Raises `ValueError` when the Airflow credentials are missing. A policy that cannot be loaded
    does not stop the service: every command is refused with the reason, and the reason is logged."""
    airflow = AirflowClient(settings.airflow_api_url, token=settings.airflow_token,
                            username=settings.airflow_username, password=settings.airflow_password)
    try:
        policy, problem = load_policy(settings.policy_path), None
    except PolicyError as exc:
        log.error("%s. Every Slack command is refused until it is fixed.", exc)
        policy, problem = DENY_ALL, "the command policy could not be loaded (see the server log)"
    return Router(policy=policy, airflow=airflow, links_base=settings.links_base,
                  usergroups=UsergroupDirectory(settings.bot_token, settings.slack_api_url),
                  policy_problem=problem)
