"""`predict.backend: auto` (seed document 004's rule) and deterministic job names."""

from __future__ import annotations

from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[1] / "include" / "pipelines" / "natality_sagemaker.yaml"


VERTEX = {"project": "p", "region": "europe-west4", "serving_container_image_uri": "europe-docker.pkg.dev/p/s/m:1",
          "gcs_staging_uri": "gs://b/staging"}


def auto_spec(**overrides):
    from mlbatch.spec.loader import load_spec, with_overrides

    return with_overrides(load_spec(SPEC), {"predict.backend": "auto", **overrides})


@pytest.mark.parametrize(("overrides", "backend"), [
    ({}, "dataflow"),                                                            # batch: direct model
    ({"input.uri": "s3://b/in/*.jsonl", "input.format": "jsonl"}, "sagemaker"),  # already prediction format
    ({"input.uri": "gs://b/in/*.jsonl", "input.format": "jsonl", "predict.vertex": VERTEX}, "vertex"),
    ({"input.uri": "gs://b/in/*.parquet"}, "dataflow"),                          # needs prep: direct model
    ({"predict.compute.accelerator_type": "nvidia-tesla-t4",                     # GPUs: the configured
      "predict.compute.accelerator_count": 1,                                    # batch service, on an
      "predict.compute.machine_type": "ml.g4dn.xlarge"}, "sagemaker"),           # instance with that GPU
])
def test_auto_picks_the_backend_by_the_seed_rule(overrides, backend):
    spec = auto_spec(**overrides)
    assert spec.predict.backend == backend
    assert spec.predict.auto_reason


def test_auto_with_gpus_and_no_batch_service_is_a_spec_error():
    from mlbatch.errors import SpecError

    with pytest.raises(SpecError, match="needs a batch-prediction service"):
        auto_spec(**{"predict.compute.accelerator_type": "nvidia-tesla-t4",
                     "predict.compute.accelerator_count": 1, "predict.sagemaker.image_uri": None})


def test_auto_choosing_a_backend_without_its_settings_is_a_spec_error_naming_them():
    from mlbatch.errors import SpecError

    with pytest.raises(SpecError, match=r"predict\.vertex\.project: expected a value: backend vertex needs it"):
        auto_spec(**{"input.uri": "gs://b/in/*.jsonl", "input.format": "jsonl"})


def test_auto_is_resolved_by_a_named_step_not_by_the_model():
    """Validating a spec never changes it; resolve_backend returns a new spec with the reason public."""
    from mlbatch.spec.backend_choice import resolve_backend
    from mlbatch.spec.models import PipelineSpec
    from mlbatch.spec.loader import with_overrides

    data = auto_spec().model_dump()
    data["predict"].update(backend="auto", auto_reason=None)
    raw = PipelineSpec.model_validate(data)
    assert raw.predict.backend == "auto" and raw.predict.auto_reason is None
    chosen = resolve_backend(raw)
    assert (chosen.predict.backend, raw.predict.backend) == ("dataflow", "auto")
    assert "direct model" in chosen.predict.auto_reason
    explicit = with_overrides(chosen, {"predict.backend": "local"})
    assert (explicit.predict.backend, explicit.predict.auto_reason) == ("local", None)
    assert with_overrides(chosen, {"input.id_column": "id"}).predict.auto_reason == chosen.predict.auto_reason


def test_a_spec_file_cannot_set_the_auto_reason(tmp_path):
    from mlbatch.errors import SpecError
    from mlbatch.spec.loader import load_spec

    text = SPEC.read_text().replace("predict:\n", "predict:\n  auto_reason: because\n", 1)
    assert "auto_reason" in text
    (tmp_path / SPEC.name).write_text(text)
    with pytest.raises(SpecError, match=r"predict\.auto_reason.*no such field in a spec file"):
        load_spec(tmp_path / SPEC.name)


def test_job_names_are_deterministic_valid_and_distinct_per_attempt():
    import re

    from mlbatch.backends.job_names import job_name

    run_id = "manual__2026-11-20T10:00:00.123456+00:00"
    a1 = job_name("natality_sagemaker_with_a_very_long_pipeline_name_indeed", run_id, "predict", 1)
    assert a1 == job_name("natality_sagemaker_with_a_very_long_pipeline_name_indeed", run_id, "predict", 1)
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,62}", a1) and a1.endswith("-a1")
    assert job_name("p", run_id, "predict", 2) != job_name("p", run_id, "predict", 1)
    assert job_name("p", run_id, "predict", 1) != job_name("p", run_id + "x", "predict", 1)


def test_find_attempt_skips_failed_jobs_only():
    from mlbatch.backends.job_names import find_attempt

    states = {"j-1": "failed", "j-2": "active"}
    attempt = find_attempt(lambda n: f"j-{n}", lambda name: (states.get(name, "absent"), None))
    assert (attempt.number, attempt.verdict) == (2, "active")
    states["j-2"] = "failed"
    assert find_attempt(lambda n: f"j-{n}", lambda name: (states.get(name, "absent"), None)).number == 3


def test_job_names_carry_the_result_identity_and_never_collide_when_cut():
    from mlbatch.backends.job_names import fit, job_name

    run_id = "scheduled__2026-11-20T00:00:00+00:00"
    assert job_name("p", run_id, "predict", 1, identity="v1") != job_name("p", run_id, "predict", 1, identity="v2")
    assert job_name("p", run_id, "predict", 1, identity="v1") == job_name("p", run_id, "predict", 1, identity="v1")
    long_a = "natality_sagemaker_with_a_very_long_pipeline_name_for_region_a"
    long_b = "natality_sagemaker_with_a_very_long_pipeline_name_for_region_b"
    a, b = (job_name(n, run_id, "predict", 1) for n in (long_a, long_b))
    assert a != b and len(a) == len(b) == 63
    assert fit("short", 10) == "short" and len(fit("x" * 200, 128)) == 128


def test_find_attempt_waits_out_a_stopping_job_then_moves_on():
    from mlbatch.backends.job_names import find_attempt

    looks = {"n": 0}

    def describe(name):
        if name == "j-1":
            looks["n"] += 1
            return ("ending" if looks["n"] < 3 else "failed"), None
        return "absent", None

    attempt = find_attempt(lambda n: f"j-{n}", describe, poll_s=0.01)
    assert (attempt.number, attempt.verdict, looks["n"]) == (2, "absent", 3)
    with pytest.raises(RuntimeError, match="still stopping after 0 s"):
        find_attempt(lambda n: f"j-{n}", lambda name: ("ending", None), ending_wait_s=0, poll_s=0.01)


MLFLOW_ENDPOINT = {"kind": "mlflow", "url": "http://scoring.internal:5000"}


@pytest.mark.parametrize(("overrides", "backend", "why"), [
    ({"input.expected_rows": 10_000}, "endpoint", "small partition"),
    ({"input.expected_rows": None}, "dataflow", "direct model"),              # size unknown: the batch rule
    ({"input.expected_rows": 10_000_000}, "dataflow", "direct model"),        # large: the batch rule
    ({"input.expected_rows": 10_000_000, "predict.endpoint": {**MLFLOW_ENDPOINT, "serves_source_of_truth": True}},
     "endpoint", "source of truth"),
    ({"input.expected_rows": 10, "predict.endpoint": None}, "dataflow", "direct model"),  # no endpoint
])
def test_auto_scores_through_a_configured_endpoint_when_small_or_the_source_of_truth(overrides, backend, why):
    spec = auto_spec(**{"predict.endpoint": MLFLOW_ENDPOINT, **overrides})
    assert spec.predict.backend == backend
    assert why in spec.predict.auto_reason


def test_the_endpoint_threshold_is_inclusive():
    from mlbatch.spec.backend_choice import ENDPOINT_MAX_ROWS

    at = auto_spec(**{"predict.endpoint": MLFLOW_ENDPOINT, "input.expected_rows": ENDPOINT_MAX_ROWS})
    over = auto_spec(**{"predict.endpoint": MLFLOW_ENDPOINT, "input.expected_rows": ENDPOINT_MAX_ROWS + 1})
    assert (at.predict.backend, over.predict.backend) == ("endpoint", "dataflow")
