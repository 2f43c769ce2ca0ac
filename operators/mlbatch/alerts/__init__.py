"""Slack alerts for pipeline tasks: failure alerts an on-call engineer can act on, optional retry and
success notices, secrets redacted, Slack trouble never failing or stalling a task.

Kept import-light on purpose: the DAG factory imports `mlbatch.alerts.notifier`, and the DAG processor
must not pay for slack_sdk or provider hooks. Those load inside `notify()`.
"""
