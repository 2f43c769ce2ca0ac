"""The one rule for a run's conf, wherever the run comes from: every key is a trigger param.

Airflow validates the values of the DAG's params on every trigger (UI form, REST API) but accepts any
extra key in the conf and ignores it, so `{"bogus_key": 1}` would start a run that silently does what
the spec says. The pipeline steps check the conf of their run (`mlbatch.operators.base.check_run_conf`:
the first task fails, not retried, naming the unknown keys and the valid ones); Slack's `/mlops run`
and `mlbatch run` refuse such a key before they trigger anything, with this same function.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlbatch.errors import TriggerConfError


def unknown_keys(valid: Iterable[str], given: Iterable[str]) -> list[str]:
    """The keys of `given` that are not in `valid`, sorted."""
    valid = set(valid)
    return sorted(str(k) for k in given if k not in valid)


def check_conf_keys(pipeline: str, valid: Iterable[str], given: Iterable[str]) -> None:
    """Raise `TriggerConfError` (naming the unknown keys and listing the valid ones, in their spec
    order) when `given` holds a key that is not in `valid` (the pipeline's `trigger_params` keys)."""
    valid = list(valid)
    unknown = unknown_keys(valid, given)
    if unknown:
        raise TriggerConfError(pipeline, unknown, valid)
