"""Registers the bundle's operator extra links with Airflow (logic lives in mlbatch.links)."""

from airflow.plugins_manager import AirflowPlugin

from mlbatch.links import MlflowModelVersionLink, MlflowRunLink, RemoteJobConsoleLink


class MlbatchLinksPlugin(AirflowPlugin):
    name = "mlbatch_links"
    operator_extra_links = [RemoteJobConsoleLink(), MlflowRunLink(), MlflowModelVersionLink()]
