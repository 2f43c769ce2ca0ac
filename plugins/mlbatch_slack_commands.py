"""Registers the `/mlops` Slack command endpoint in the Airflow API server, under `/slack`.

Registration only (logic: `mlbatch.slack_commands`). The app is built on its first request, so the
other Airflow components that load plugins import nothing but this file and a tiny wrapper.
"""

from airflow.plugins_manager import AirflowPlugin

from mlbatch.slack_commands.lazy_app import LazyASGIApp


class MlbatchSlackCommandsPlugin(AirflowPlugin):
    name = "mlbatch_slack_commands"
    fastapi_apps = [{
        "app": LazyASGIApp("mlbatch.slack_commands.http_app:create_app"),
        "url_prefix": "/slack",
        "name": "mlbatch Slack commands",
    }]
