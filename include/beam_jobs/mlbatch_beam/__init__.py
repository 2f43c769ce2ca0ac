"""Beam jobs for ML batch prediction.

Everything here moves data as Arrow/pandas batches, never one Python object
per row, and imports nothing from Airflow so Dataflow workers can install it
on its own.
"""

__version__ = "0.1.0"
