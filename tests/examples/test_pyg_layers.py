"""examples/pyg_layers.py: a PyG model on Cora and a point model on real fragments, both train."""
from __future__ import annotations

import json

from tests.examples import load_example


def test_both_models_train_on_the_fixtures(real_data, capsys):
    example = load_example("pyg_layers")
    assert example.main(["--root", str(real_data), "--epochs", "8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for task in ("cora", "points"):
        assert summary[task]["loss_last"] < 0.7 * summary[task]["loss_first"], summary
    assert summary["cora"]["val_acc"] > 0.3  # 7 classes: chance is about 0.14
    assert summary["points"]["loss_last"] < summary["points"]["target_variance"]  # better than the mean


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    example = load_example("pyg_layers")
    assert example.main(["--root", str(tmp_path), "--task", "cora"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --root:") and "\n" not in err
    assert example.main(["--root", str(tmp_path), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
