"""One benchmark case, run in its own process: `python bench/cases.py <case> <dataset JSON> <out dir>`.

Each case is a whole program, as a user would run it: it imports what it needs, loads the same
registered model, reads the same files, scores every row and writes [id, prediction] files. The
parent (bench/run.py) times the process from spawn to exit and reads its peak memory; the case
prints one JSON line with what only it can see (how long its imports took, rows written).

Cases:
  raw         the machine's limit: pyarrow reads every file, one `predict` on the whole numpy
              array (the sklearn model via mlflow.sklearn), one Parquet write. No Beam.
  stock       plain Beam: ReadFromParquet (a dict per row) -> numpy per row ->
              RunInference(KeyedModelHandler(SklearnModelHandlerNumpy)) -> WriteToParquet.
  naive       a DoFn calling the sklearn model once per row (1x4 numpy array) -> WriteToParquet.
              A lower bound for naive: pyfunc per row costs ~3x more per call.
  ours_inmem  our direct-model job (mlbatch_beam.score, as the predict operator runs it), FnApiRunner
              in_memory.
  ours_mp2    the same, FnApiRunner multi_processing with 2 worker processes.
  local       our `local` backend (mlbatch_beam.local_predict, vertex flavor) on JSON Lines.
  raw_run     the raw limit of a whole pipeline run (bench/whole_run.py): pyarrow reads the raw input,
              prep's own vectorised rules (mlbatch_beam.validate.split_valid) split valid from rejected
              rows, rejected rows are written as JSON Lines with their reason, one `predict` on the
              valid rows, one Parquet write. No Beam, no Airflow, no MLflow registry look-up.
"""
from __future__ import annotations

import json
import sys
import time

STARTED = time.perf_counter()
sys.path.insert(0, __file__.rsplit("/", 1)[0])

from datasets import Dataset  # noqa: E402  (light: stdlib only)

PIPELINE_ARGS = ["--runner=FnApiRunner"]


def _imported(**extra) -> dict:
    return {"import_s": round(time.perf_counter() - STARTED, 3), **extra}


def raw(ds: Dataset, out: str, sample: str | None) -> dict:
    import glob
    import os

    import mlflow.sklearn
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sklearn.ensemble  # noqa: F401  (the model's own import, counted as import time)

    info = _imported()
    import gc

    gc.freeze()  # as the direct-model job's CLI does: the limit gets every trick ours gets
    model = mlflow.sklearn.load_model(ds.artifact_uri)
    table = pq.read_table(sorted(glob.glob(sample or ds.parquet_glob)))
    x = np.column_stack([table.column(f).to_numpy().astype("float64") for f in ds.features])
    predictions = model.predict(x)
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table({"id": table.column("id"), "prediction": predictions}),
                   f"{out}/predictions.parquet")
    return {**info, "rows": table.num_rows}


def raw_run(ds: Dataset, out: str, sample: str | None) -> dict:
    import glob
    import json as json_
    import os

    import mlflow.sklearn
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sklearn.ensemble  # noqa: F401

    from mlbatch_beam.schema import FeatureSchema
    from mlbatch_beam.validate import split_valid

    info = _imported()
    import gc

    gc.freeze()
    schema = FeatureSchema.from_json(ds.schema_json)
    model = mlflow.sklearn.load_model(ds.artifact_uri)
    table = pq.read_table(sorted(glob.glob(sample or ds.parquet_glob)))
    valid, rejected = split_valid(table.combine_chunks().to_batches()[0], schema, "input")
    x = np.column_stack([valid.column(f).to_numpy(zero_copy_only=False).astype("float64")
                         for f in schema.feature_names])
    predictions = model.predict(x)
    os.makedirs(f"{out}/output", exist_ok=True)
    os.makedirs(f"{out}/rejected", exist_ok=True)
    pq.write_table(pa.table({schema.id_column: valid.column(schema.id_column), ds.prediction_column: predictions}),
                   f"{out}/output/predictions.parquet")
    with open(f"{out}/rejected/rejected.jsonl", "w") as f:
        f.writelines(json_.dumps(r) + "\n" for r in rejected)
    return {**info, "rows": table.num_rows, "rows_scored": valid.num_rows, "rows_rejected": len(rejected)}


def _parquet_sink(out: str):
    import apache_beam as beam
    import pyarrow as pa

    schema = pa.schema([("id", pa.int64()), ("prediction", pa.float64())])
    return beam.io.WriteToParquet(f"{out}/predictions", schema, file_name_suffix=".parquet")


def stock(ds: Dataset, out: str, sample: str | None) -> dict:
    import apache_beam as beam
    import numpy as np
    import sklearn.ensemble  # noqa: F401
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.sklearn_inference import ModelFileType, SklearnModelHandlerNumpy
    from apache_beam.options.pipeline_options import PipelineOptions

    info = _imported()
    features = list(ds.features)
    handler = KeyedModelHandler(SklearnModelHandlerNumpy(ds.sklearn_pickle, ModelFileType.PICKLE))
    with beam.Pipeline(options=PipelineOptions(PIPELINE_ARGS)) as p:
        _ = (
            p
            | beam.io.ReadFromParquet(sample or ds.parquet_glob)
            | "ToNumpy" >> beam.Map(lambda row: (row["id"], np.array([row[f] for f in features], "float64")))
            | RunInference(handler)
            | "ToRow" >> beam.MapTuple(lambda key, result: {"id": key, "prediction": float(result.inference)})
            | _parquet_sink(out)
        )
    return info


class _PredictEachRow:
    """Built lazily so the module imports no Beam at top level."""

    @staticmethod
    def make(artifact_uri: str, features: list[str]):
        import apache_beam as beam
        import numpy as np

        class PredictEachRow(beam.DoFn):
            def setup(self):
                import mlflow.sklearn

                self._model = mlflow.sklearn.load_model(artifact_uri)

            def process(self, row):
                x = np.array([[row[f] for f in features]], dtype="float64")
                yield {"id": row["id"], "prediction": float(self._model.predict(x)[0])}

        return PredictEachRow()


def naive(ds: Dataset, out: str, sample: str | None) -> dict:
    import warnings

    import apache_beam as beam
    import mlflow.sklearn  # noqa: F401
    import numpy as np  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    from apache_beam.options.pipeline_options import PipelineOptions

    info = _imported()
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    with beam.Pipeline(options=PipelineOptions(PIPELINE_ARGS)) as p:
        _ = (
            p
            | beam.io.ReadFromParquet(sample or ds.parquet_glob)
            | "PredictEachRow" >> beam.ParDo(_PredictEachRow.make(ds.artifact_uri, list(ds.features)))
            | _parquet_sink(out)
        )
    return info


def _run_cli(module: str, args: list[str], result_file: str) -> dict:
    """Run a job module exactly as `python -m <module> ...` (the operators' way) and read its result."""
    import runpy

    sys.argv = [module, *args, "--result-file", result_file]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    with open(result_file) as f:
        return json.load(f)


def _ours(ds: Dataset, out: str, sample: str | None, runner_args: list[str]) -> dict:
    import mlflow.pyfunc  # noqa: F401  (imported by the job on first use; counted as import time)
    import sklearn.ensemble  # noqa: F401

    import mlbatch_beam.score  # noqa: F401

    info = _imported()
    result = _run_cli("mlbatch_beam.score", [
        "--input", sample or ds.parquet_glob, "--model-uri", ds.artifact_uri, "--id-column", "id",
        "--feature-columns", ",".join(ds.features), "--output-dir", out, "--output-format", "parquet",
        *runner_args], f"{out}.result.json")
    return {**info, "rows": result["rows_scored"], "model_loads": result["model_loads"]}


def ours_inmem(ds, out, sample):
    return _ours(ds, out, sample, ["--runner=FnApiRunner"])


def ours_mp2(ds, out, sample):
    return _ours(ds, out, sample, ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                                   "--direct_num_workers=2"])


def local(ds: Dataset, out: str, sample: str | None) -> dict:
    import mlflow.pyfunc  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    import mlbatch_beam.local_predict  # noqa: F401

    info = _imported()
    result = _run_cli("mlbatch_beam.local_predict", [
        "--input", sample or ds.jsonl_glob, "--model-uri", ds.artifact_uri, "--id-column", "id",
        "--feature-columns", ",".join(ds.features), "--output-dir", out, "--flavor", "vertex",
    ], f"{out}.result.json")
    return {**info, "rows": result["rows_scored"]}


CASES = {"raw": raw, "stock": stock, "naive": naive, "ours_inmem": ours_inmem, "ours_mp2": ours_mp2,
         "local": local, "raw_run": raw_run}

if __name__ == "__main__":
    case, dataset_json, out_dir = sys.argv[1:4]
    sample_path = sys.argv[4] if len(sys.argv) > 4 else None
    stdout = sys.stdout
    sys.stdout = sys.stderr  # the jobs print their own result; the parent reads only this case's line
    info = CASES[case](Dataset.from_json(dataset_json), out_dir, sample_path)
    print(json.dumps(info), file=stdout, flush=True)
    import gc

    gc.freeze()  # every case exits alike: no final sweep over the imported libraries' objects
