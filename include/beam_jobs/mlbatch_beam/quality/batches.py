"""What the summaries share: reading a batch (Arrow or numpy) into values and a null count, and the
checks before two summaries merge."""

from __future__ import annotations

import numpy as np

from mlbatch_beam.quality import StatisticsError

VERSION = 1


def to_numpy(values, column: str, want: str) -> tuple[np.ndarray, int]:
    """(non-null values, null count) of an Arrow array/chunked array or a numpy array."""
    if hasattr(values, "null_count"):  # pyarrow
        import pyarrow.compute as pc

        nulls, present = values.null_count, pc.drop_null(values)
        data = present.to_numpy(zero_copy_only=False) if hasattr(present, "to_numpy") else np.asarray(present)
    else:
        data = np.asarray(values)
        missing = np.array([v is None for v in data.ravel()], dtype=bool) if data.dtype == object else (
            np.zeros(data.size, dtype=bool))
        nulls, data = int(missing.sum()), data.ravel()[~missing]
    if want == "numeric":
        if data.dtype == object and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                        for v in data):
            data = data.astype(np.float64)  # a list of numbers with None among them
        if data.dtype.kind not in "iuf":
            raise StatisticsError(f"column {column!r}: a numeric summary got {data.dtype} values "
                                  f"(e.g. {data[:1].tolist()}); summarise it as categorical")
        return data.astype(np.float64), nulls
    return (np.where(data, "true", "false") if data.dtype.kind == "b" else data.astype(str)), nulls


def check_same(a, b) -> None:
    if type(a) is not type(b) or a.column != b.column:
        raise StatisticsError(f"cannot merge the {a.kind} summary of column {a.column!r} with the "
                              f"{b.kind} summary of column {b.column!r}")


def pick(choose, a, b):
    """min/max of two optional values."""
    return b if a is None else a if b is None else choose(a, b)
