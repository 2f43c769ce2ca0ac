"""`/mlops` Slack commands: run, inspect, fetch logs and retry pipelines, safely.

One slack-bolt app (`bolt_app`) around one router (`router.Router`), behind two front doors: Bolt's
FastAPI adapter mounted in the Airflow API server by `plugins/mlbatch_slack_commands.py` (`http_app`),
and Bolt's Socket Mode handler for workspaces without public ingress
(`python -m mlbatch.slack_commands.socket_mode`). Both acknowledge within Slack's 3 seconds and post
the slow part (a lazy listener) to the command's `response_url`.

Every module here talks to Airflow only through its public REST API v2 (`airflow_api`). Importing this
package is free: submodules load on use, so Airflow components that load the plugin pay nothing.
"""
