"""examples/planetoid_lagnn.py (real Cora, tiny settings, resume) and examples/ogbn_arxiv_lagnn.py (synthetic OGB)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.examples import load_example


def _cora(real_data):
    root = real_data / "graphs" / "planetoid"
    if not (root / "Cora" / "raw").is_dir():
        pytest.skip("Planetoid Cora fixture missing")
    return root


def _without_timing(runs):
    return [{key: value for key, value in run.items() if key not in ("seconds", "cpu_seconds")} for run in runs]


def assert_log_files(folder, epochs, columns):
    """log.csv has one row per epoch with ``columns``; curve.png is a PNG that opens."""
    from geoattn.train_log import read_csv_log

    rows = read_csv_log(folder / "log.csv")
    assert [row["epoch"] for row in rows] == [str(epoch) for epoch in range(1, epochs + 1)]
    assert set(columns) <= set(rows[0]) and all(row[key] != "" for row in rows for key in columns)
    picture = (folder / "curve.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    pil = pytest.importorskip("PIL.Image")
    with pil.open(folder / "curve.png") as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_planetoid_example_tiny_run_and_resume(real_data, tmp_path, capsys):
    root = _cora(real_data)
    example = load_example("planetoid_lagnn")
    generator, checkpoint = tmp_path / "cora_generator_{seed}.pt", tmp_path / "runs.json"
    common = ["--root", str(root), "--dataset", "Cora", "--model", "gcn", "--epochs", "3", "--generator",
              str(generator), "--generator-steps", "3", "--checkpoint", str(checkpoint), "--quiet", "--json",
              "--sample-pool", "2", "--trace", "--out", str(tmp_path / "logs")]
    first = example.main(common + ["--runs", "1"])
    assert (tmp_path / "cora_generator_0.pt").is_file() and first["runs"] == 1 and first["generator_seconds"] > 0
    assert_log_files(tmp_path / "logs" / "seed_0", 3, ["loss", "val_loss", "val_acc"])
    # per epoch: val loss, val acc, test acc, then (loss, acc) on each half of the validation nodes
    trace = json.loads(checkpoint.read_text())["runs"][0]["trace"]
    assert len(trace) == 3 and all(len(epoch) == 7 for epoch in trace)
    for epoch in trace:  # the halves have 250 nodes each: their mean is the whole set's figure
        assert epoch[1] == pytest.approx((epoch[4] + epoch[6]) / 2, abs=1e-6)
        assert epoch[0] == pytest.approx((epoch[3] + epoch[5]) / 2, abs=1e-4)
    assert 0.0 <= first["test_acc_mean"] <= 100.0 and first["epochs_run_mean"] == 3
    second = example.main(common + ["--runs", "2", "--resume"])
    # run 0 reused from the checkpoint, run 1 fitted its own generator (seed 1)
    assert second["runs"] == 2 and second["generator_seeds"] == [0, 1] and second["generator_seconds"] > 0
    assert (tmp_path / "cora_generator_1.pt").is_file() and (tmp_path / "logs" / "seed_1" / "log.csv").is_file()
    assert second["test_accs"][0] == first["test_accs"][0]
    again = example.main(common + ["--runs", "2", "--checkpoint", str(tmp_path / "again.json")])
    assert again["generator_seconds"] == 0.0 and again["test_accs"] == second["test_accs"]  # both files reused
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed[-1]["runs"] == 2 and {"test_acc_mean", "test_acc_std", "seconds_per_run"} <= set(printed[-1])
    baseline = example.main(["--root", str(root), "--dataset", "Cora", "--model", "gat", "--no-la", "--epochs", "2",
                             "--runs", "1", "--quiet"])
    assert baseline["model"] == "gat" and baseline["generator_seconds"] == 0.0


def test_planetoid_example_same_command_same_numbers(real_data, tmp_path):
    """Two runs of one command agree bit for bit (generator fit included), and run r of --seed 0 is
    --seed r on its own: each seed fits its own generator and nothing carries over between runs."""
    root = _cora(real_data)
    example = load_example("planetoid_lagnn")
    common = ["--root", str(root), "--dataset", "Cora", "--model", "gcn", "--epochs", "4", "--generator-steps", "20",
              "--quiet", "--sample-pool", "2", "--trace"]
    results = []
    for name, extra in (("a", ["--runs", "2"]), ("b", ["--runs", "2"]), ("c", ["--runs", "1", "--seed", "1"])):
        torch.manual_seed(12345 + len(results))  # whatever the global generator holds must not matter
        torch.rand(7)
        example.main(common + extra + ["--checkpoint", str(tmp_path / f"{name}.json")])
        results.append(_without_timing(json.loads((tmp_path / f"{name}.json").read_text())["runs"]))
    first, second, alone = results
    assert first == second
    assert [run["generator_seed"] for run in first] == [0, 1]
    assert alone == first[1:]
    assert first[0]["trace"] != first[1]["trace"]  # the seeds do differ


def test_planetoid_example_shared_generator_and_stale_files(real_data, tmp_path):
    root = _cora(real_data)
    example = load_example("planetoid_lagnn")
    common = ["--root", str(root), "--dataset", "Cora", "--model", "gcn", "--epochs", "2", "--generator-steps", "3",
              "--quiet", "--sample-pool", "2"]
    single = tmp_path / "generator.pt"
    with pytest.raises(ValueError, match=r"--generator: the runs fit 2 generators .*\{seed\}"):
        example.main(common + ["--runs", "2", "--generator", str(single)])
    shared = example.main(common + ["--runs", "2", "--generator", str(single), "--generator-seed", "5"])
    assert shared["generator_seeds"] == [5, 5] and single.is_file()
    with pytest.raises(ValueError, match=r"--generator: .*generator\.pt records the fit .*'seed': 5.*'seed': 0"):
        example.main(common + ["--runs", "1", "--generator", str(single)])


def test_planetoid_example_missing_root(tmp_path):
    example = load_example("planetoid_lagnn")
    with pytest.raises(FileNotFoundError, match="ind.cora"):
        example.main(["--root", str(tmp_path), "--quiet"])


def test_ogbn_example_on_synthetic_ogb_data(tmp_path):
    pytest.importorskip("ogb")
    example = load_example("ogbn_arxiv_lagnn")
    generator = tmp_path / "generator.pt"
    common = ["--synthetic-nodes", "120", "--hidden", "8", "--epochs", "2", "--runs", "1", "--generator-steps", "2",
              "--generator", str(generator), "--quiet"]
    metrics = example.main(common + ["--model", "sage"])
    assert metrics["dataset"] == "ogbn-synthetic" and metrics["model"] == "la-sage" and generator.is_file()
    again = example.main(common + ["--model", "gcn"])
    assert again["generator_seconds"] == 0.0 and 0.0 <= again["test_acc_mean"] <= 100.0
    plain = example.main(["--synthetic-nodes", "120", "--hidden", "8", "--epochs", "2", "--runs", "1", "--no-la",
                          "--quiet"])
    assert plain["model"] == "gcn"


OGBN_TINY = ["--synthetic-nodes", "120", "--hidden", "8", "--epochs", "6", "--generator-steps", "2", "--quiet",
             "--save-every", "2"]


def test_ogbn_example_same_numbers_seed_alone_and_exact_resume(tmp_path, monkeypatch):
    """Same command, same numbers; run 1 of --seed 0 is --seed 1 alone; a run interrupted after its
    saved epoch 4 state ends as the uninterrupted one; per-run log.csv and curve.png."""
    pytest.importorskip("ogb")
    example = load_example("ogbn_arxiv_lagnn")
    results = []
    for name, extra in (("a", ["--runs", "2"]), ("b", ["--runs", "2"]), ("c", ["--runs", "1", "--seed", "1"])):
        torch.manual_seed(999 + len(results))
        results.append(example.main(OGBN_TINY + extra + ["--checkpoint", str(tmp_path / f"{name}.json")]))
    assert results[0]["test_accs"] == results[1]["test_accs"] and results[0]["generator_seeds"] == [0, 1]
    runs = [_without_timing(json.loads((tmp_path / f"{name}.json").read_text())["runs"]) for name in "abc"]
    assert runs[0] == runs[1] and runs[2] == runs[0][1:]
    # interrupted right after run 1 saved its epoch-4 state (run 0 is recorded by then)
    save = example.save_checkpoint

    def save_then_stop(path, state):
        save(path, state)
        if path.name.endswith("seed1.pt") and state["epoch"] == 4:
            raise KeyboardInterrupt

    part, logs = tmp_path / "part.json", str(tmp_path / "logs")
    monkeypatch.setattr(example, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        example.main(OGBN_TINY + ["--runs", "2", "--checkpoint", str(part), "--out", logs])
    monkeypatch.undo()
    assert len(json.loads(part.read_text())["runs"]) == 1 and (tmp_path / "part.json.seed1.pt").is_file()
    resumed = example.main(OGBN_TINY + ["--runs", "2", "--checkpoint", str(part), "--resume", "--out", logs])
    assert resumed["test_accs"] == results[0]["test_accs"]
    assert _without_timing(json.loads(part.read_text())["runs"]) == runs[0]
    assert not (tmp_path / "part.json.seed1.pt").exists()
    assert_log_files(tmp_path / "logs" / "seed_1", 6, ["loss", "valid_acc"])


@pytest.mark.slow
def test_ogbn_example_two_cpu_processes(tmp_path):
    """torchrun, 2 gloo processes: the 3 runs are shared out and give the single-process figures."""
    pytest.importorskip("ogb")
    import os
    import signal
    import subprocess
    import sys

    from tests.examples import EXAMPLES

    example = load_example("ogbn_arxiv_lagnn")
    single = example.main(OGBN_TINY + ["--runs", "3", "--threads", "1"])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(EXAMPLES / "ogbn_arxiv_lagnn.py"), *OGBN_TINY, "--runs", "3", "--threads", "1", "--json",
               "--dist-timeout", "120", "--checkpoint", str(tmp_path / "runs.json"), "--out", str(tmp_path / "logs")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["test_accs"] == single["test_accs"]
    assert [run["seed"] for run in json.loads((tmp_path / "runs.json").read_text())["runs"]] == [0, 1, 2]
    for seed in range(3):
        assert_log_files(tmp_path / "logs" / f"seed_{seed}", 6, ["loss", "valid_acc"])


def test_planetoid_epoch_selector_rules():
    example = load_example("planetoid_lagnn")
    #                  epoch: 0     1     2     3     4     5
    losses = [1.0, 0.8, 0.9, 0.7, 0.75, 0.74]
    accs = [0.5, 0.6, 0.7, 0.65, 0.7, 0.71]
    by_loss = example.EpochSelector("val_loss", patience=2)
    kept = [by_loss.update(epoch, loss, acc) for epoch, (loss, acc) in enumerate(zip(losses, accs))]
    assert kept == [True, True, False, True, False, False]  # lowest validation loss so far
    assert not by_loss.should_stop(4) and by_loss.should_stop(5)  # two epochs without a new lowest loss
    gat = example.EpochSelector("gat", patience=2)
    kept = [gat.update(epoch, loss, acc) for epoch, (loss, acc) in enumerate(zip(losses, accs))]
    # GAT paper: keep when accuracy AND loss are both at their best so far; patience resets when EITHER is
    assert kept == [True, True, False, False, False, False]
    assert gat.last_improvement == 5 and not gat.should_stop(6) and gat.should_stop(7)
    assert not example.EpochSelector("val_loss", patience=None).should_stop(10**6)
    with pytest.raises(ValueError, match="rule"):
        example.EpochSelector("val_acc")


def test_planetoid_generation_dtype():
    import torch

    example = load_example("planetoid_lagnn")
    assert example.generation_dtype("float32", torch.device("cpu")) == torch.float32
    assert example.generation_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert example.generation_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)


def test_planetoid_sample_source_pool_and_fresh_draws():
    import torch

    from geoattn.nn import LocalAugmenter

    example = load_example("planetoid_lagnn")
    torch.manual_seed(0)
    augmenter = LocalAugmenter(12, hidden_channels=16, latent_channels=3).eval()
    x_raw = (torch.rand(9, 12) < 0.3).float()
    pooled = example.SampleSource(augmenter, x_raw, torch.float32, pool_size=3, seed=5)
    assert pooled.pool.shape == (3, 9, 12) and pooled.pool.dtype == torch.float32
    # the pool holds the first 3 fresh draws of the same seed, row-normalised
    fresh = example.SampleSource(augmenter, x_raw, torch.float32, pool_size=0, seed=5)
    assert fresh.pool is None
    for index in range(3):
        assert torch.equal(pooled.pool[index], fresh.draw())
    torch.testing.assert_close(pooled.pool.sum(-1), torch.ones(3, 9))
    draws = [pooled.draw() for _ in range(30)]
    picked = {next(i for i in range(3) if torch.equal(draw, pooled.pool[i])) for draw in draws}
    assert picked == {0, 1, 2}  # every draw is a pool matrix, and all of them get used
    assert not torch.equal(fresh.draw(), fresh.draw())  # no pool: a new matrix per draw


def test_planetoid_input_dtype_bfloat16_pool():
    import torch

    from geoattn.nn import LocalAugmenter

    example = load_example("planetoid_lagnn")
    cpu = torch.device("cpu")
    assert example.input_dtype("bfloat16", "gcnii", cpu) == torch.float32  # only GCN/GAT first layers take bf16
    assert example.input_dtype("bfloat16", "gat", cpu) == torch.bfloat16
    assert example.input_dtype("float32", "gcn", cpu) == torch.float32
    torch.manual_seed(0)
    augmenter = LocalAugmenter(12, hidden_channels=16, latent_channels=3).eval()
    x_raw = (torch.rand(9, 12) < 0.3).float()
    reference = example.SampleSource(augmenter, x_raw, torch.float32, pool_size=2, seed=5)
    pooled = example.SampleSource(augmenter, x_raw, torch.float32, pool_size=2, seed=5, out_dtype=torch.bfloat16)
    assert pooled.pool.dtype == torch.bfloat16 and torch.equal(pooled.pool, reference.pool.bfloat16())
    fresh = example.SampleSource(augmenter, x_raw, torch.float32, pool_size=0, seed=5, out_dtype=torch.bfloat16)
    assert fresh.draw().dtype == torch.bfloat16


def test_planetoid_generator_selection_default_per_dataset():
    example = load_example("planetoid_lagnn")
    assert example.parse_args(["--root", "r"]).select is None  # resolved per data set: SELECT_GENERATOR
    assert example.SELECT_GENERATOR == {"Cora": False, "CiteSeer": True}
    assert example.parse_args(["--root", "r", "--no-select"]).select is False
    assert example.parse_args(["--root", "r", "--select"]).select is True
