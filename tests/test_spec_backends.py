"""`mlbatch validate` refuses specs that cannot run (issue 21, item 5): each backend's required fields
(for the spec's backend and every backend its trigger form offers), feature type/constraint combinations,
a trigger enum without the spec's own value, and one accelerator vocabulary translated per backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlbatch.errors import BackendConfigError, SpecError
from mlbatch.local.cli import main as cli_main
from mlbatch.spec.loader import load_spec, with_overrides

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "include" / "pipelines"
SHIPPED = sorted(PIPELINES.glob("*.yaml")) + sorted((ROOT / "include" / "examples").rglob("*.yaml"))


def spec_file(folder: Path, name: str, source: str, edit) -> Path:
    doc = yaml.safe_load((PIPELINES / f"{source}.yaml").read_text())
    doc["name"] = name
    edit(doc)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def refused(capsys, path: Path) -> str:
    """`mlbatch validate` on one file: exit 1, and what it printed."""
    assert cli_main(["validate", str(path)]) == 1
    return capsys.readouterr().err


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("env", ["dev", "prod"])
def test_shipped_specs_still_validate(path, env, capsys):
    assert cli_main(["validate", str(path), "--env", env]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("source", "block", "fields"), [
    ("natality_sagemaker", "sagemaker", ["role_arn", "image_uri", "s3_staging_uri"]),
    ("natality_vertex", "vertex", ["project", "region", "serving_container_image_uri", "gcs_staging_uri"]),
])
def test_a_backend_without_its_required_fields_is_refused_naming_each(tmp_path, capsys, source, block, fields):
    def strip(doc):
        for f in fields:
            doc["predict"][block].pop(f)

    err = refused(capsys, spec_file(tmp_path, "p_missing", source, strip))
    for f in fields:
        assert f"p_missing.yaml:" in err and f"predict.{block}.{f}: expected a value: backend {block} needs it" in err


@pytest.mark.parametrize(("source", "edit", "message"), [
    ("natality_sagemaker", lambda d: d["predict"]["sagemaker"].update(s3_staging_uri="gs://b/x"),
     "predict.sagemaker.s3_staging_uri = 'gs://b/x': expected a s3:// URI"),
    ("natality_vertex", lambda d: d["predict"]["vertex"].update(gcs_staging_uri="s3://b/x"),
     "predict.vertex.gcs_staging_uri = 's3://b/x': expected a gs:// URI"),
    ("natality_vertex", lambda d: d["predict"]["network"].update(subnetwork="ml-private"),
     "no network/subnetwork on backend vertex"),
    ("natality_vertex", lambda d: d["predict"]["vertex"].update(serving_container_image_uri="img:{version}"),
     "only placeholders are {model_name} and {model_version}"),
    ("natality_sagemaker", lambda d: d["predict"]["network"].update(subnetwork="subnet-1"),
     "both subnetwork and security_group_ids, or neither"),
    ("natality_sagemaker", lambda d: d["predict"]["sagemaker"].update(max_payload_mb=50),
     "predict.sagemaker.max_concurrent_transforms = 4: expected at most 2 with max_payload_mb 50"),
    ("natality_daily", lambda d: d["predict"].update(dataflow={"runner": "dataflow"}),
     "predict.dataflow.project: expected a value: backend dataflow (runner dataflow) needs it"),
])
def test_backend_settings_that_cannot_build_a_job_are_refused(tmp_path, capsys, source, edit, message):
    assert message in refused(capsys, spec_file(tmp_path, "p_bad", source, edit))


@pytest.mark.parametrize(("feature", "message"), [
    ({"type": "string", "min": 1}, "min/max apply to int and float features, not string; use allowed"),
    ({"type": "bool", "max": 1}, "min/max apply to int and float features, not bool"),
    ({"type": "int", "min": 5, "max": 1}, "min 5.0 > max 1.0: no value can pass"),
    ({"type": "string", "allowed": []}, "allowed is empty"),
    ({"type": "int", "allowed": [1, "2"]}, "allowed values ['2'] are not of type int"),
    ({"type": "int", "allowed": [True]}, "allowed values [True] are not of type int"),
    ({"type": "bool", "allowed": [1]}, "allowed values [1] are not of type bool"),
    ({"type": "float", "allowed": [1.5, None]}, "null in allowed; use nullable: true"),
    ({"type": "float", "min": 0, "max": 1, "allowed": [0.5, 2]}, "allowed values [2] are outside min/max"),
])
def test_feature_constraints_that_make_no_sense_for_the_type_are_refused(tmp_path, capsys, feature, message):
    err = refused(capsys, spec_file(tmp_path, "p_feature", "natality_daily",
                                    lambda d: d["input"]["features"].append({"name": "extra", **feature})))
    assert "input.features.4 = " in err and message in err


@pytest.mark.parametrize("feature", [
    {"type": "string", "allowed": ["a", "b"]}, {"type": "int", "min": 1, "max": 5, "allowed": [1, 5]},
    {"type": "float", "allowed": [1, 2.5]}, {"type": "bool", "allowed": [True], "nullable": True},
])
def test_feature_constraints_that_fit_the_type_load(tmp_path, feature):
    path = spec_file(tmp_path, "p_ok", "natality_daily",
                     lambda d: d["input"]["features"].append({"name": "extra", **feature}))
    assert load_spec(path).input.features[-1].type == feature["type"]


def test_a_trigger_enum_without_the_specs_own_value_is_refused(tmp_path, capsys):
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    def enum_without_own(doc):
        doc["trigger_params"]["backend"]["enum"] = ["local"]

    err = refused(capsys, spec_file(tmp_path, "p_enum", "natality_daily", enum_without_own))
    assert "trigger_params.backend.enum = ['local']: expected a list holding the spec's own predict.backend 'dataflow'" in err
    with pytest.raises(ParamValidationError):  # what the run would have met: Airflow checks the default
        Param("dataflow", type="string", enum=["local"]).resolve()


def test_every_backend_the_trigger_form_offers_must_be_able_to_run(tmp_path, capsys):
    def offer_sagemaker(doc):
        doc["trigger_params"]["backend"]["enum"] = ["dataflow", "local", "sagemaker"]

    err = refused(capsys, spec_file(tmp_path, "p_offer", "natality_daily", offer_sagemaker))
    assert ("trigger_params.backend.enum = 'sagemaker': expected values a run can use; with predict.backend = "
            "'sagemaker': predict.sagemaker.role_arn: expected a value") in err

    def with_settings(doc):
        offer_sagemaker(doc)
        doc["predict"]["sagemaker"] = {"role_arn": "arn:aws:iam::1:role/r", "image_uri": "1.dkr.ecr/x:1",
                                       "s3_staging_uri": "s3://b/staging"}

    spec = load_spec(spec_file(tmp_path, "p_offer", "natality_daily", with_settings))
    assert with_overrides(spec, {"predict.backend": "sagemaker"}).predict.backend == "sagemaker"


def test_a_run_override_to_a_backend_that_cannot_run_is_refused_before_anything_runs():
    spec = load_spec(PIPELINES / "natality_daily.yaml")
    with pytest.raises(SpecError, match=r"predict\.vertex\.project: expected a value"):
        with_overrides(spec, {"predict.backend": "vertex"})


# --- one accelerator vocabulary ---------------------------------------------------------------------

def test_every_vertex_translation_is_a_member_of_the_installed_enum():
    from google.cloud.aiplatform_v1.types import AcceleratorType

    from mlbatch.spec.accelerators import ACCELERATORS

    names = {vertex for _, vertex in ACCELERATORS.values() if vertex}
    assert names and names <= set(AcceleratorType.__members__)


def gpu(source: str, name: str, count: int = 1, **compute):
    return with_overrides(load_spec(PIPELINES / f"{source}.yaml"), {
        "predict.compute": {**load_spec(PIPELINES / f"{source}.yaml").predict.compute.model_dump(),
                            "accelerator_type": name, "accelerator_count": count, **compute}})


def test_one_gpu_name_works_on_dataflow_and_vertex_each_in_its_own_terms(monkeypatch):
    from google.cloud.aiplatform_v1.types import AcceleratorType

    from mlbatch.backends.dataflow_options import dataflow_pipeline_args
    from mlbatch.backends.vertex import job_request

    monkeypatch.setenv("MLBATCH_ENV", "prod")
    dataflow = gpu("natality_daily", "nvidia-l4", 2)
    args = dataflow_pipeline_args(dataflow, job_name="natality-daily-1", setup_file="setup.py")
    assert "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:2;install-nvidia-driver" in args
    vertex = job_request(gpu("natality_vertex", "nvidia-l4", 2), "j", "projects/p/models/1", ["gs://b/i"],
                         "gs://b/o", "manual__1")
    machine = vertex.dedicated_resources.machine_spec
    assert (machine.accelerator_type, machine.accelerator_count) == (AcceleratorType.NVIDIA_L4, 2)


@pytest.mark.parametrize(("name", "message"), [
    ("NVIDIA_TESLA_T4", "(did you mean 'nvidia-tesla-t4'?)"),
    ("tesla-t4", "expected one of ['nvidia-tesla-t4', "),
])
def test_a_gpu_name_outside_the_vocabulary_is_refused_listing_it(name, message):
    with pytest.raises(SpecError, match=r"predict\.compute\.accelerator_type = .*" + f"{message}".replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace("?", r"\?")):
        gpu("natality_daily", name)


@pytest.mark.parametrize(("source", "name", "compute", "message"), [
    ("natality_vertex", "nvidia-a10g", {}, "expected a GPU backend vertex has, one of ['nvidia-tesla-t4'"),
    ("natality_daily", "nvidia-l40s", {}, "expected a GPU backend dataflow has"),
    ("natality_sagemaker", "nvidia-tesla-t4", {}, "predict.compute.machine_type = 'ml.m5.xlarge': expected a "
                                                  "SageMaker GPU instance type"),
    ("natality_sagemaker", "nvidia-l4", {"machine_type": "ml.g4dn.xlarge"},
     "predict.compute.accelerator_type = 'nvidia-l4': expected 'nvidia-tesla-t4', the GPU of instance type ml.g4dn.xlarge"),
])
def test_a_gpu_a_backend_cannot_give_is_refused(source, name, compute, message):
    with pytest.raises(SpecError) as refused_:
        gpu(source, name, **compute)
    assert message in str(refused_.value)


def test_sagemaker_takes_the_gpu_its_instance_type_carries():
    spec = gpu("natality_sagemaker", "nvidia-a10g", machine_type="ml.g5.2xlarge")
    assert spec.predict.compute.accelerator_type == "nvidia-a10g"


def test_a_spec_built_without_the_loader_meets_the_same_rule_when_the_job_is_built():
    from mlbatch.backends.base import require_runnable
    from mlbatch.spec.models import PipelineSpec

    data = load_spec(PIPELINES / "natality_sagemaker.yaml").model_dump()
    data["predict"]["sagemaker"]["role_arn"] = None
    with pytest.raises(BackendConfigError, match=r"predict\.sagemaker\.role_arn: expected a value"):
        require_runnable(PipelineSpec.model_validate(data), "sagemaker")
