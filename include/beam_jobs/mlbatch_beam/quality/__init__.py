"""Per-column statistics of one run (`statistics`, `numeric`, with `sketch` for a run with no baseline
yet), computed while a job reads its data. Here, in the Beam package, because Dataflow workers install
only this package and the direct-model job computes them in its scoring pass (`combine`); the Airflow
side (`mlbatch.quality`: the measures and the gate) imports them from here. Numpy and pyarrow only:
this package and these modules import no Beam (the CombineFn is in `combine`)."""


class StatisticsError(ValueError):
    """Column statistics that cannot be built, merged or read: values of the wrong kind for the summary,
    summaries of different columns, kinds or bin edges, a stored summary that is not one. The message
    names the column and both sides. (mlbatch.errors.StatisticsError is what the Airflow side raises.)"""
