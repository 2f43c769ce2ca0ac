"""Fail where the cause is: resolve_model checks the spec against the real MLflow registry and the model's
signature; prep (a real Beam job on real files) enforces prep.max_rejected_fraction and refuses a run
with no valid row, naming the top reasons and the dead letters; predict never runs on nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloud_backends import task_context

REPO = Path(__file__).resolve().parents[1]
DS = "2026-11-22"
HEADER = "id,is_male,mother_age,plurality,gestation_weeks\n"


def natality_spec(tmp_path: Path, **overrides):
    from mlbatch.spec.loader import load_spec, with_overrides

    base = {"input.uri": str(tmp_path / "in" / "*.csv"), "input.format": "csv", "input.marker": None,
            "output.uri": str(tmp_path / "out" / "ds={{ ds }}"), "predict.backend": "local"}
    return with_overrides(load_spec(REPO / "include" / "pipelines" / "natality_daily.yaml"),
                          {**base, **overrides})


def write_csv(tmp_path: Path, rows: list[str]) -> None:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "part-0.csv").write_text(HEADER + "".join(r + "\n" for r in rows))


# --- resolve_model ----------------------------------------------------------------------------------

def resolve(spec, model_fixture=None):
    from mlbatch.operators.resolve_model import ResolveModelOperator

    return ResolveModelOperator(task_id="resolve_model", spec=spec).execute(
        task_context("manual__resolve", DS, model_fixture or {}))


def test_resolve_model_pins_the_alias_when_the_features_fit(tmp_path, registered_model):
    pinned = resolve(natality_spec(tmp_path))
    assert pinned["version"] == registered_model["version"]
    assert pinned["uri"] == f"models:/natality_weight/{registered_model['version']}"


def test_missing_alias_names_the_model_and_the_aliases_it_has(tmp_path, registered_model):
    from mlbatch.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError) as err:
        resolve(natality_spec(tmp_path, **{"model.alias": "challenger"}))
    message = str(err.value)
    assert "model 'natality_weight' has no alias 'challenger'" in message
    assert f"champion -> v{registered_model['version']}" in message

    with pytest.raises(ModelNotFoundError, match="model 'natality_wieght' is not registered"):
        resolve(natality_spec(tmp_path, **{"model.name": "natality_wieght"}))


def test_features_that_do_not_fit_the_signature_fail_naming_each_difference(tmp_path, registered_model):
    from mlbatch.errors import ModelMismatchError

    features = [{"name": "is_male", "type": "bool"}, {"name": "mother_age", "type": "float"},
                {"name": "plurality", "type": "float"},          # the model takes long
                {"name": "gestation_days", "type": "float"}]     # renamed column
    with pytest.raises(ModelMismatchError) as err:
        resolve(natality_spec(tmp_path, **{"input.features": features}))
    message = str(err.value)
    assert "the model needs columns that input.features lacks: ['gestation_weeks']" in message
    assert "input.features has columns the model does not take: ['gestation_days']" in message
    assert "plurality: input.features says float, the model signature says long" in message


# --- prep -------------------------------------------------------------------------------------------

def run_prep(spec, model):
    from mlbatch.operators.prep import BeamPrepOperator

    op = BeamPrepOperator(task_id="prep", spec=spec)
    context = task_context("manual__prep", DS, model)
    return op, context, op.execute(context)


def test_prep_with_no_valid_row_fails_with_the_reasons_and_predict_refuses_to_run(tmp_path, model):
    from mlbatch.errors import NoValidRowsError
    from mlbatch.operators.predict import PredictOperator

    write_csv(tmp_path, [f"{i},true,30.0,{i % 3}.5,39.0" for i in range(20)])  # an int feature of floats
    spec = natality_spec(tmp_path)
    with pytest.raises(NoValidRowsError) as err:
        run_prep(spec, model)
    message = str(err.value)
    assert "prep found no valid row (20 of 20 rows rejected)" in message
    assert "20 × plurality: not an int   (e.g. plurality: '0.5' is not an int)" in message
    dead_letters = tmp_path / "out" / "_work" / "natality_daily" / "manual__prep" / "rejected"
    assert f"dead letters: {dead_letters}" in message
    assert len([line for f in dead_letters.glob("*.jsonl") for line in f.open()]) == 20

    predict = PredictOperator(task_id="predict", spec=spec)
    context = task_context("manual__prep", DS, model)
    context["ti"].upstream["prep"] = {"rows_in": 20, "rows_valid": 0, "rows_rejected": 20}
    with pytest.raises(RuntimeError, match="prep left no valid row to predict"):
        predict.execute(context)
    assert not (tmp_path / "out" / f"ds={DS}").exists()


def test_prep_enforces_max_rejected_fraction_itself(tmp_path, model):
    from mlbatch.errors import TooManyRejectedError

    rows = [f"{i},true,30.0,1,39.0" for i in range(90)]
    rows += [f"{90 + i},true,1e999,1,39.0" for i in range(7)] + ["97,true,30.0,1,", "98,true,30.0,1,",
                                                                 "99,maybe,30.0,1,39.0"]
    write_csv(tmp_path, rows)
    with pytest.raises(TooManyRejectedError) as err:
        run_prep(natality_spec(tmp_path, **{"prep.max_rejected_fraction": 0.05}), model)
    message = str(err.value)
    assert "prep rejected 10 of 100 rows (10.00%) > prep.max_rejected_fraction 5.00%" in message
    lines = message.splitlines()
    top = lines.index("top reasons:")
    assert lines[top + 1] == "  7 × mother_age: not a finite number   (e.g. mother_age: '1e999' is not a finite number)"
    assert lines[top + 2] == "  2 × gestation_weeks: missing value   (e.g. gestation_weeks: empty string not allowed)"
    assert lines[top + 3] == "  1 × is_male: not a bool   (e.g. is_male: 'maybe' is not a bool)"


def test_with_the_direct_model_predict_gives_preps_verdict_after_its_one_pass(tmp_path, model):
    """backend dataflow on the local runner: prep runs nothing, predict's one job validates and scores,
    then refuses the run with prep's own message; nothing is published."""
    from mlbatch.errors import TooManyRejectedError
    from mlbatch.operators.predict import PredictOperator

    write_csv(tmp_path, [f"{i},true,30.0,1,39.0" for i in range(90)] + [f"{90 + i},true,1e999,1,39.0" for i in range(10)])
    spec = natality_spec(tmp_path, **{"predict.backend": "dataflow", "prep.max_rejected_fraction": 0.05})
    assert spec.predict.dataflow.runner == "local"
    _, context, prep = run_prep(spec, model)
    assert prep == {"runs_in": "predict"}
    with pytest.raises(TooManyRejectedError) as err:
        PredictOperator(task_id="predict", spec=spec).execute(context)
    message = str(err.value)
    assert "prep rejected 10 of 100 rows (10.00%) > prep.max_rejected_fraction 5.00%; nothing was published." in message
    assert "10 × mother_age: not a finite number" in message
    assert not (tmp_path / "out" / f"ds={DS}").exists()
