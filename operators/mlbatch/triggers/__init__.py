"""Triggers of the bundle. They live in the installed `mlbatch` package because the triggerer imports
triggers by classpath and does not load DAG bundles."""
