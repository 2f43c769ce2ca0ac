"""Registers the bundle's operator extra links with Airflow (logic lives in mlbatch.operators.links)."""

from airflow.plugins_manager import AirflowPlugin

from mlbatch.operators.links import MlflowModelVersionLink, MlflowRunLink, RemoteJobConsoleLink


class MlbatchLinksPlugin(AirflowPlugin):
    name = "mlbatch_links"
    operator_extra_links = [RemoteJobConsoleLink(), MlflowRunLink(), MlflowModelVersionLink()]
