"""`predict.backend: endpoint` (issue 24): a partition scored through a live model endpoint.

Spec: the block's fields per kind, the service's request limit, connections and the trigger form."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlbatch.errors import SpecError
from mlbatch.local.cli import main as cli_main
from mlbatch.spec.loader import load_spec, with_overrides

ROOT = Path(__file__).resolve().parents[1]
DAILY = ROOT / "include" / "pipelines" / "natality_daily.yaml"
KINDS = {
    "mlflow": {"kind": "mlflow", "url": "http://scoring.internal:5000"},
    "sagemaker": {"kind": "sagemaker", "endpoint_name": "natality", "region": "eu-west-1"},
    "vertex": {"kind": "vertex", "endpoint_id": "123", "project": "p", "region": "europe-west4"},
}


def spec_file(folder: Path, endpoint: dict | None, backend: str = "endpoint", **top) -> Path:
    doc = yaml.safe_load(DAILY.read_text())
    doc["name"] = "p_endpoint"
    doc["predict"]["backend"] = backend
    if endpoint is not None:
        doc["predict"]["endpoint"] = endpoint
    doc["trigger_params"]["backend"]["enum"] = sorted({backend, "dataflow"})
    doc.update(top)
    path = folder / "p_endpoint.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def refused(capsys, path: Path) -> str:
    assert cli_main(["validate", str(path)]) == 1
    return capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_with_its_fields(tmp_path, kind):
    spec = load_spec(spec_file(tmp_path, KINDS[kind]))
    assert (spec.predict.backend, spec.predict.endpoint.kind) == ("endpoint", kind)


@pytest.mark.parametrize(("kind", "fields"), [
    ("mlflow", ["url"]), ("sagemaker", ["endpoint_name", "region"]), ("vertex", ["endpoint_id", "project", "region"])])
def test_a_kind_without_its_fields_is_refused_naming_each(tmp_path, capsys, kind, fields):
    err = refused(capsys, spec_file(tmp_path, {"kind": kind}))
    assert "p_endpoint.yaml:" in err
    for f in fields:
        assert f"predict.endpoint.{f}: expected a value: backend endpoint (kind {kind}) needs it" in err


def test_backend_endpoint_without_the_block_is_refused(tmp_path, capsys):
    err = refused(capsys, spec_file(tmp_path, None))
    assert "predict.endpoint.kind: expected one of ['mlflow', 'sagemaker', 'vertex']" in err


@pytest.mark.parametrize(("kind", "limit"), [("sagemaker", 6 * 1024 * 1024), ("vertex", 1_572_864)])
def test_a_request_size_over_the_services_limit_is_refused_naming_field_and_limit(tmp_path, capsys, kind, limit):
    err = refused(capsys, spec_file(tmp_path, {**KINDS[kind], "max_bytes_per_request": limit + 1}))
    assert (f"predict.endpoint.max_bytes_per_request = {limit + 1}: expected at most {limit} bytes, "
            f"the {kind} request limit") in err
    assert load_spec(spec_file(tmp_path, {**KINDS[kind], "max_bytes_per_request": limit})).predict.endpoint \
        .request_bytes() == limit


def test_a_url_that_is_not_http_is_refused(tmp_path, capsys):
    err = refused(capsys, spec_file(tmp_path, {"kind": "mlflow", "url": "scoring.internal:5000"}))
    assert "predict.endpoint.url = 'scoring.internal:5000': expected an http:// or https:// URL" in err


def test_the_endpoints_cloud_connections_follow_the_storage_rule(tmp_path):
    spec = load_spec(spec_file(tmp_path, KINDS["sagemaker"], storage={"aws_conn_id": "aws_team",
                                                                      "gcp_conn_id": "gcp_team"}))
    assert (spec.predict.endpoint.aws_conn_id, spec.predict.endpoint.gcp_conn_id) == ("aws_team", "gcp_team")
    moved = with_overrides(spec, {"storage.aws_conn_id": "aws_other"})
    assert moved.predict.endpoint.aws_conn_id == "aws_other"
    own = load_spec(spec_file(tmp_path, {**KINDS["sagemaker"], "aws_conn_id": "aws_endpoint"},
                              storage={"aws_conn_id": "aws_team"}))
    assert with_overrides(own, {"storage.aws_conn_id": "aws_other"}).predict.endpoint.aws_conn_id == "aws_endpoint"


def test_the_trigger_form_can_switch_a_spec_to_and_from_the_endpoint(tmp_path):
    spec = load_spec(spec_file(tmp_path, KINDS["mlflow"], backend="dataflow",
                               trigger_params={"backend": {"field": "predict.backend",
                                                           "enum": ["dataflow", "endpoint"]}}))
    assert with_overrides(spec, {"predict.backend": "endpoint"}).predict.backend == "endpoint"
    back = load_spec(spec_file(tmp_path, KINDS["mlflow"]))
    assert with_overrides(back, {"predict.backend": "dataflow"}).predict.backend == "dataflow"


def test_a_run_override_to_the_endpoint_without_one_configured_is_refused():
    with pytest.raises(SpecError, match=r"predict\.endpoint\.kind: expected one of"):
        with_overrides(load_spec(DAILY), {"predict.backend": "endpoint"})
