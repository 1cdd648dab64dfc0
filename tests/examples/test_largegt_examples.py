"""examples/ogb_largegt.py (single process, resume, 2-process DDP on CPU) and examples/planetoid_largegt.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.examples import EXAMPLES, load_example

pytest.importorskip("ogb")


SMALL = ["--synthetic-nodes", "200", "--K", "4", "--hidden", "8", "--num-centroids", "8", "--global-channels", "4",
         "--batch-size", "64", "--json"]


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def test_ogb_example_synthetic_checkpoint_and_resume(tmp_path, capsys):
    example = load_example("ogb_largegt")
    checkpoint = str(tmp_path / "ck.pt")
    assert example.main(SMALL + ["--epochs", "1", "--checkpoint", checkpoint]) == 0
    first = last_json(capsys.readouterr().out)
    assert first["epochs"] == 1 and 0.0 <= first["test_acc_at_best_valid"] <= 1.0
    assert example.main(SMALL + ["--epochs", "2", "--checkpoint", checkpoint, "--resume"]) == 0
    resumed = last_json(capsys.readouterr().out)
    assert resumed["epochs"] == 2 and not Path(checkpoint + ".tmp").exists()


def test_ogb_example_errors(tmp_path, capsys):
    example = load_example("ogb_largegt")
    assert example.main(["--dataset", "ogbn-products"]) == 2
    assert "--root is required" in capsys.readouterr().err
    assert example.main(["--dataset", "ogbn-products", "--root", str(tmp_path)]) == 2
    assert "ogbn_products" in capsys.readouterr().err
    assert example.main(["--resume", "--checkpoint", str(tmp_path / "none.pt")]) == 2


class _Hostile:
    def __reduce__(self):
        return (exec, ("import sys; sys.modules['geoattn'].PWNED = True",))


def test_examples_resume_only_from_weights_only_checkpoints(real_data, tmp_path, capsys):
    import geoattn

    evil = tmp_path / "evil.pt"
    torch.save({"results": [], "run": 0, "payload": _Hostile()}, evil)
    (tmp_path / "cut.pt").write_bytes(evil.read_bytes()[:50])
    planetoid = ["--root", str(real_data / "graphs" / "planetoid"), "--dataset", "Cora", "--resume"]
    for checkpoint in (evil, tmp_path / "cut.pt"):
        assert load_example("ogb_largegt").main(["--resume", "--checkpoint", str(checkpoint)]) == 2
        err = capsys.readouterr().err
        assert "--checkpoint" in err and str(checkpoint) in err and err.count("\n") == 1
        assert load_example("planetoid_largegt").main(planetoid + ["--checkpoint", str(checkpoint)]) == 2
        err = capsys.readouterr().err
        assert "--checkpoint" in err and str(checkpoint) in err and err.count("\n") == 1
    assert not hasattr(geoattn, "PWNED")


def test_ogb_example_snap_patents_mat(tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    num_nodes = 120
    edge_index = rng.integers(0, num_nodes, (2, 600))
    features = sp.random(num_nodes, 7, density=0.3, format="csr", random_state=0)
    scipy_io.savemat(tmp_path / "snap_patents.mat", {"edge_index": edge_index, "node_feat": features,
                                                     "years": rng.integers(1975, 2000, (1, num_nodes))})
    example = load_example("ogb_largegt")
    args = ["--dataset", "snap-patents", "--root", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
            "--epochs", "1"] + SMALL[2:]
    assert example.main(args) == 0
    assert last_json(capsys.readouterr().out)["dataset"] == "snap-patents"


def _run_process_group(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` in a session of its own and kill the whole session (torchrun *and* its workers) when it
    overruns ``timeout`` or the test is interrupted, and after it exits, so that no worker outlives the test."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command[:6])} ... did not finish in {timeout} s (process group killed); "
                    f"stderr: {err[-3000:]}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind by a clean torchrun exit, if any
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_ddp_two_processes_on_cpu(tmp_path):
    checkpoint = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(EXAMPLES / "ogb_largegt.py"), "--epochs", "1", "--checkpoint", str(checkpoint),
               "--dist-timeout", "300", *SMALL]
    completed = _run_process_group(command, timeout=400, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = last_json(completed.stdout)
    assert result["world_size"] == 2 and result["epochs"] == 1
    state = torch.load(checkpoint, weights_only=True)
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_process_group_has_a_timeout_and_is_torn_down_on_error_paths(tmp_path, monkeypatch, capsys):
    """WORLD_SIZE=2 makes the example set up DDP; a one-process gloo group stands in for the real one."""
    import datetime

    import torch.distributed as dist

    example = load_example("ogb_largegt")
    seen, init = {}, dist.init_process_group

    def init_one_process_group(backend, timeout=None):
        seen["timeout"] = timeout
        init(backend, store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1, timeout=timeout)

    monkeypatch.setattr(example.dist, "init_process_group", init_one_process_group)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    torch.save(torch.zeros(3, 2), tmp_path / "pos.pt")  # wrong number of rows: an error return after set-up
    assert example.main(SMALL + ["--pos-enc", str(tmp_path / "pos.pt"), "--dist-timeout", "42"]) == 2
    assert "--pos-enc" in capsys.readouterr().err
    assert seen["timeout"] == datetime.timedelta(seconds=42) and not dist.is_initialized()


def test_planetoid_example_on_cora(real_data, capsys):
    example = load_example("planetoid_largegt")
    args = ["--root", str(real_data / "graphs" / "planetoid"), "--dataset", "Cora", "--runs", "1", "--epochs", "2",
            "--K", "3", "--hidden", "8", "--json"]
    assert example.main(args) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["runs"] == 1 and 0.0 <= summary["test_acc_mean"] <= 1.0 and summary["test_acc_std"] == 0.0
    # the other token / feature / evaluation options of the Cora defaults, switched the other way
    assert example.main(args + ["--normalize-features", "--global-input", "raw", "--no-resample"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["runs"] == 1 and 0.0 <= summary["test_acc_mean"] <= 1.0 and summary["test_acc_std"] == 0.0
    assert example.main(["--root", str(real_data), "--dataset", "Cora"]) == 2


def test_planetoid_evaluation_draws(real_data, tmp_path):
    example = load_example("planetoid_largegt")
    data = example.load_planetoid(real_data / "graphs" / "planetoid", "Cora", tmp_path)
    graph = example.csr_from_edge_index(data.edge_index, data.num_nodes)
    cache = example.precompute_largegt(data.x, graph, tmp_path / "cache", 3, seed=0, progress=False)
    collate = example.LargeGTCollate(cache, y=data.y, resample=True, seed=0)
    torch.manual_seed(0)
    model = example.LargeGT(data.num_features, 8, 7, num_nodes=data.num_nodes, num_centroids=4, global_channels=4)
    nodes = data.val_mask.nonzero().flatten()[:50]
    collate.set_epoch(17)
    single = example.accuracy(model, collate, nodes, data.y[nodes], "cpu", "hop2", 1)
    averaged = example.accuracy(model, collate, nodes, data.y[nodes], "cpu", "hop2", 4)
    assert collate.epoch == 17  # the training epoch's stream is restored
    # the same fixed draws every call; draw 0 is epoch 0's sequences
    assert example.accuracy(model, collate, nodes, data.y[nodes], "cpu", "hop2", 4) == averaged
    model.eval()
    collate.set_epoch(0)
    with torch.no_grad():
        logits = example.forward(model, collate(nodes), "cpu", "hop2")
    assert single == float((logits.argmax(-1) == data.y[nodes]).float().mean())
    with pytest.raises(SystemExit):
        example.parse_args(["--root", "unused", "--eval-draws", "0"])
    with pytest.raises(SystemExit):
        example.parse_args(["--root", "unused", "--eval-draws", "2", "--no-resample"])


def test_planetoid_defaults_are_the_validated_ones():
    # chosen on Cora validation accuracy (datasets/largegt.md): lr 2e-3 with the longer schedule, attention dropout,
    # evaluation averaged over 8 neighbour draws
    args = load_example("planetoid_largegt").parse_args(["--root", "unused"])
    assert (args.lr, args.epochs, args.patience, args.attn_dropout) == (2e-3, 800, 200, 0.2)
    assert (args.K, args.hidden, args.heads, args.num_centroids) == (6, 64, 1, 64)
    assert (args.input_dropout, args.global_input, args.resample, args.weight_decay) == (0.3, "hop2", True, 5e-4)
    assert args.eval_draws == 8
    assert load_example("planetoid_largegt").parse_args(["--root", "unused", "--no-resample"]).eval_draws == 1
