"""Packaging for the Beam jobs.

Kept separate from the Airflow project on purpose: Dataflow workers install
only this package (via --setup_file), so it must not depend on Airflow.
"""
from setuptools import find_packages, setup

setup(
    name="mlbatch-beam",
    version="0.1.0",
    description="Columnar Apache Beam jobs for ML batch prediction (prep, score, local predict).",
    packages=find_packages(include=["mlbatch_beam", "mlbatch_beam.*"]),
    python_requires=">=3.10",
    install_requires=[
        "apache-beam",
        "pyarrow",
        "pandas",
        "mlflow-skinny",
    ],
)
