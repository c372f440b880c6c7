"""benchmarks.factor_collapse reads run folders (config.yaml, history.jsonl, influence_factors.npy)."""
import json

import numpy as np

from benchmarks import factor_collapse
from kdem_tf import config as config_lib


def _run(path, seed, temperature, detach, mi_v, factors, mAP):
    path.mkdir()
    config = config_lib.load_config("demo", overrides=[f"seed={seed}", f"model.factor_temperature={temperature}",
                                                       f"loss.con_detach_factors={detach}"])
    (path / "config.yaml").write_text(config_lib.to_yaml(config))
    history = [{"epoch": e + 1, "mi_v_mean": m, "mi_v_std": 0.01} for e, m in enumerate(mi_v)]
    history[-1]["eval"] = {"mAP": mAP, "rank1": mAP - 5}
    (path / "history.jsonl").write_text("\n".join(json.dumps(r) for r in history) + "\n")
    np.save(path / "influence_factors.npy", np.asarray(factors, np.float32))
    return str(path)


def test_rows_and_group_means(tmp_path, capsys):
    runs = [_run(tmp_path / "a", 0, 1.0, False, [0.6, 0.97, 1.0], [1.0, 1.0, 0.99, 0.5], 60.0),
            _run(tmp_path / "b", 1, 1.0, False, [0.5, 0.6, 0.7], [0.5, 0.6, 0.7, 0.99], 50.0),
            _run(tmp_path / "c", 0, 8.0, True, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 40.0)]
    rows = [factor_collapse.run_row(run, 0.05) for run in runs]
    assert [r["saturated_from_epoch"] for r in rows] == [2, None, None]
    assert [r["interior_share"] for r in rows] == [0.25, 0.75, 1.0]
    assert (rows[2]["detached"], rows[2]["temperature"], rows[1]["seed"]) == (True, 8.0, 1)
    assert factor_collapse.main(runs) == 0
    table = capsys.readouterr().out
    assert "| a | attached | 1 | 0 | 1.0000 (0.0100) | 25.0% | 2 | 60.00 | 55.00 |" in table
    assert "| attached | 1 | 2 | 0.8500 ± 0.1500 | 55.00 ± 5.00 | 50.00 ± 5.00 |" in table
    assert "| detached | 8 | 1 |" in table and "| never |" in table
