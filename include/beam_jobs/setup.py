"""Packaging for the Beam jobs.

Kept separate from the Airflow project on purpose: Dataflow workers install only this package
(the launcher passes ``--setup_file`` pointing here, see mlbatch.backends.dataflow_options), so it
must not depend on Airflow. The workers' pinned dependencies live in worker-requirements.txt, the
one place to change them; the sdist carries that file (MANIFEST.in) because Dataflow builds the
package from the sdist on every worker.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def worker_requirements() -> list[str]:
    lines = (HERE / "worker-requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


setup(
    name="mlbatch-beam",
    version="0.1.0",
    description="Columnar Apache Beam jobs for ML batch prediction (prep, score, local predict).",
    packages=find_packages(include=["mlbatch_beam", "mlbatch_beam.*"]),
    python_requires=">=3.10",
    install_requires=worker_requirements(),
)
