import json

import pytest
import torch

from tests.examples import load_example


@pytest.fixture(scope="module")
def example():
    return load_example("logonet_head_overfit")


def test_example_trains_checkpoints_and_resumes(example, real_data, tmp_path, capsys):
    previous = torch.get_num_threads()
    checkpoint = tmp_path / "head.pt"
    common = ["--root", str(real_data / "fusion"), "--threads", "1", "--checkpoint", str(checkpoint), "--json"]
    try:
        example.main(["--steps", "2"] + common)
        first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert checkpoint.exists() and torch.load(checkpoint, weights_only=True)["step"] == 2
        example.main(["--steps", "3", "--resume"] + common)
        resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        torch.set_num_threads(previous)
    assert first["last"]["step"] == 2 and resumed["first"]["step"] == 3
    for record in (first["first"], first["last"], resumed["last"]):
        assert all(value == value for value in record.values())  # no NaN
    assert list(tmp_path.iterdir()) == [checkpoint]  # no temporary files left behind


def test_example_resume_needs_checkpoint(example, real_data):
    with pytest.raises(SystemExit, match="--resume needs"):
        example.main(["--root", str(real_data / "fusion"), "--resume"])
