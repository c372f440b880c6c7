"""pipeline.components on real tfx artifact objects, without a pipeline run.

PreviousBlessedModelStrategy resolves the evaluator's baseline: the latest blessed Model other
than the one being evaluated. Models get MLMD-like ids (later = larger); each ModelBlessing
carries the custom properties ReidEvaluator writes (`blessed`, `current_model_id`).
"""
from tfx.types import standard_artifacts

from pipeline import components


def _model(artifact_id):
    model = standard_artifacts.Model()
    model.id = artifact_id
    model.uri = f"/models/{artifact_id}"
    return model


def _blessing(artifact_id, model, blessed):
    blessing = standard_artifacts.ModelBlessing()
    blessing.id = artifact_id
    blessing.set_int_custom_property(components.BLESSED_KEY, int(blessed))
    blessing.set_int_custom_property(components.CURRENT_MODEL_ID_KEY, model.id)
    return blessing


def _resolve(models, blessings, current):
    strategy = components.PreviousBlessedModelStrategy()
    return strategy.resolve_artifacts(None, {"model": models, "model_blessing": blessings, "current": [current]})


def test_picks_the_latest_blessed_model_other_than_the_current_one():
    old, newer, current = _model(3), _model(7), _model(9)
    blessings = [_blessing(4, old, True), _blessing(8, newer, True), _blessing(10, current, True)]
    # Input order must not matter: the latest is the largest id.
    out = _resolve([newer, current, old], blessings[::-1], current)
    assert [m.id for m in out["model"]] == [7]
    assert [b.id for b in out["model_blessing"]] == [8]
    assert [m.id for m in out["current"]] == [9]


def test_ignores_models_that_were_not_blessed():
    old, rejected, current = _model(3), _model(7), _model(9)
    out = _resolve([old, rejected, current],
                   [_blessing(4, old, True), _blessing(8, rejected, False), _blessing(10, current, False)], current)
    assert [m.id for m in out["model"]] == [3]
    assert [b.id for b in out["model_blessing"]] == [4]


def test_no_baseline_when_only_the_current_model_is_blessed():
    rejected, current = _model(3), _model(7)
    out = _resolve([rejected, current], [_blessing(4, rejected, False), _blessing(8, current, True)], current)
    assert out["model"] == [] and out["model_blessing"] == []
    first = _model(1)
    assert _resolve([first], [], first)["model"] == []  # the very first run: no blessing at all
