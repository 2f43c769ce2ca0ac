"""Spec loading: interpolation, environments, and errors that name file, line, field, value, expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlbatch.local.cli import main as cli_main
from mlbatch.errors import SpecError
from mlbatch.spec.loader import load_spec, with_overrides

EXAMPLE = Path(__file__).resolve().parents[1] / "include" / "pipelines" / "natality_daily.yaml"


def write_spec(folder: Path, name: str, edit=None, raw: str | None = None) -> Path:
    path = folder / f"{name}.yaml"
    if raw is not None:
        path.write_text(raw)
        return path
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["name"] = name
    if edit:
        edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_example_spec_loads_with_interpolation(monkeypatch):
    monkeypatch.setenv("MLBATCH_DATA_ROOT", "/data/x")
    spec = load_spec(EXAMPLE)
    assert spec.input.uri == "/data/x/natality/ds={{ ds }}/*.parquet"
    assert spec.output.uri == "/data/x/predictions/natality_daily/ds={{ ds }}"
    assert [f.name for f in spec.input.features] == ["is_male", "mother_age", "plurality", "gestation_weeks"]
    assert spec.predict.backend == "dataflow"


def test_environment_override_is_merged_over_the_base(monkeypatch):
    monkeypatch.setenv("MLBATCH_ENV", "prod")
    spec = load_spec(EXAMPLE)
    assert spec.input.uri.startswith("gs://example-ml-prod/natality/")
    assert spec.predict.dataflow.project == "example-ml-prod"
    assert spec.predict.compute.max_workers == 4  # untouched base values survive the merge


def test_env_interpolation_default_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLBATCH_DATA_ROOT", raising=False)
    assert load_spec(EXAMPLE).input.uri.startswith("/tmp/mlbatch/data/")

    def needs_env(doc):
        doc["vars"]["data_root"] = "${env:SURELY_NOT_SET_VAR}"

    with pytest.raises(SpecError, match=r"vars.data_root .*environment variable SURELY_NOT_SET_VAR"):
        load_spec(write_spec(tmp_path, "p_env", needs_env))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["predict"].update(backend="gpu"),
         r"predict\.backend = 'gpu': expected one of 'local', 'dataflow', 'sagemaker', 'vertex', 'endpoint' or 'auto'"),
        (lambda d: d["input"]["features"][1].update(type="decimal"),
         r"input\.features\.1\.type = 'decimal': expected one of 'int', 'float', 'bool' or 'string'"),
        (lambda d: d["output"].update(fromat="csv"),
         r"output\.fromat = 'csv': expected no such field"),
        (lambda d: d["model"].pop("alias"),
         r"model = .*: expected give exactly one of 'alias' or 'version'"),
        (lambda d: d.pop("input"),
         r"input: expected a value \(the field is required\)"),
        (lambda d: d["trigger_params"]["backend"].update(field="predict.bakend"),
         r"trigger_params.backend.field 'predict.bakend' is not a field of the spec"),
        (lambda d: d["predict"]["compute"].update(min_workers=5, max_workers=2),
         r"predict\.compute = .*max_workers \(2\) < min_workers \(5\)"),
        (lambda d: d["vars"].update(data_root="${vars.nowhere}"),
         r"\$\{vars.nowhere\} to name an existing field"),
        (lambda d: d["vars"].update(data_root="${input.uri}"),
         r"no circular reference"),
    ],
)
def test_bad_spec_error_names_file_field_value_and_expectation(tmp_path, edit, expected):
    path = write_spec(tmp_path, "bad_pipeline", edit)
    with pytest.raises(SpecError, match=expected) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))


def test_error_points_at_the_yaml_line(tmp_path):
    text = EXAMPLE.read_text().replace("name: natality_daily", "name: lined").replace(
        "    - {name: plurality, type: int, min: 1, max: 5}",
        "    - {name: plurality, type: integer, min: 1, max: 5}")
    path = write_spec(tmp_path, "lined", raw=text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "type: integer" in t)
    with pytest.raises(SpecError, match=rf"lined.yaml:{line}: input\.features\.2\.type = 'integer'"):
        load_spec(path)


def test_file_name_must_match_pipeline_name(tmp_path):
    path = write_spec(tmp_path, "other_name")
    path.write_text(path.read_text().replace("name: other_name", "name: natality_daily"))
    with pytest.raises(SpecError, match=r"name = 'natality_daily': expected the file name 'other_name'"):
        load_spec(path)


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(SpecError, match="readable YAML"):
        load_spec(write_spec(tmp_path, "broken", raw="name: [unclosed\n"))
    with pytest.raises(SpecError, match="a mapping of spec fields"):
        load_spec(write_spec(tmp_path, "listy", raw="- a\n- b\n"))


def test_trigger_overrides_are_validated():
    spec = load_spec(EXAMPLE)
    assert with_overrides(spec, {"predict.backend": "local"}).predict.backend == "local"
    with pytest.raises(SpecError, match=r"predict\.backend = 'gpu'"):
        with_overrides(spec, {"predict.backend": "gpu"})


def test_cli_validate(tmp_path, capsys):
    good = write_spec(tmp_path, "good_one")
    bad = write_spec(tmp_path, "bad_one", lambda d: d["output"].update(format="xlsx"))
    assert cli_main(["validate", str(good)]) == 0
    assert cli_main(["validate", str(good), str(bad), "--env", "dev", "--env", "prod"]) == 1
    out, err = capsys.readouterr()
    assert "ok  " in out and "[prod]" in out
    assert f"{bad}:" in err and "output.format = 'xlsx'" in err
