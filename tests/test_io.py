"""geoattn.io: atomic writes (mode, clean-up, replace) and checkpoints (round trip, clear errors)."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from geoattn import io as gio


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask(mask: int):
    previous = os.umask(mask)
    return previous


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_mode_follows_umask(tmp_path, mask):
    previous = _umask(mask)
    try:
        assert gio.current_umask() == mask
        target = gio.atomic_write_bytes(tmp_path / "sub" / "a.bin", b"abc")
        assert target.read_bytes() == b"abc"
        assert _mode(target) == 0o666 & ~mask
        text = gio.atomic_write_text(tmp_path / "b.txt", "h\u00e9\n")
        assert text.read_bytes() == "h\u00e9\n".encode() and _mode(text) == 0o666 & ~mask
    finally:
        os.umask(previous)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    gio.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_atomic_write_failure_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(gio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        gio.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_atomic_write_bad_input(tmp_path):
    with pytest.raises(TypeError, match="bytes-like"):
        gio.atomic_write_bytes(tmp_path / "x", "text")
    with pytest.raises(TypeError, match="str"):
        gio.atomic_write_text(tmp_path / "x", b"bytes")
    with pytest.raises(IsADirectoryError, match="folder"):
        gio.atomic_write_bytes(tmp_path, b"x")


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    config = {"MODEL": {"NAME": "x", "SIZES": [1, 2]}, "LR": 0.1, "FLAG": None}
    path = gio.save_checkpoint(tmp_path / "ck" / "model.pt", {"model": model.state_dict(), "epoch": 3}, config)
    state = gio.load_checkpoint(path)
    assert state["epoch"] == 3 and state["config"] == config
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    assert _mode(path) == 0o666 & ~gio.current_umask()


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        gio.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="folder"):
        gio.load_checkpoint(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt.*empty"):
        gio.load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="junk.pt"):
        gio.load_checkpoint(tmp_path / "junk.pt")
    good = gio.save_checkpoint(tmp_path / "good.pt", {"w": torch.arange(1000.0)})
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        gio.load_checkpoint(tmp_path / "truncated.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt.*dictionary"):
        gio.load_checkpoint(tmp_path / "list.pt")


class _Custom:
    pass


def test_checkpoint_refuses_code_and_bad_config(tmp_path):
    torch.save({"obj": _Custom()}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="code.pt.*weights-only"):
        gio.load_checkpoint(tmp_path / "code.pt")
    with pytest.raises(TypeError, match=r"config\.MODEL\.x"):
        gio.save_checkpoint(tmp_path / "c.pt", {}, {"MODEL": {"x": _Custom()}})
    with pytest.raises(TypeError, match="state must be a dict"):
        gio.save_checkpoint(tmp_path / "c.pt", [1])
    with pytest.raises(ValueError, match="differs"):
        gio.save_checkpoint(tmp_path / "c.pt", {"config": {"a": 1}}, {"a": 2})
    assert not (tmp_path / "c.pt").exists()


class _Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_pickle_load_admits_data_and_refuses_code(tmp_path):
    import pickle

    import numpy as np

    data = {"a": np.arange(3, dtype=np.float32), "b": [np.float64(1.5), "text", (1, 2)]}
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data, protocol=2))
    loaded = gio.restricted_pickle_load(tmp_path / "ok.pkl")
    assert loaded["b"] == data["b"] and loaded["a"].tolist() == [0.0, 1.0, 2.0]
    buffer = tmp_path / "zip.pth"
    torch.save({"x": np.ones((2, 3))}, buffer)
    assert gio.restricted_pickle_load(buffer)["x"].shape == (2, 3)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Hostile()))
    torch.save(_Hostile(), tmp_path / "evil.pth")
    for name, message in [("evil.pkl", "refusing to load (posix|os).system"), ("evil.pth", "(posix|os).system"),
                          ("ok.pkl", None)]:
        if message is None:
            (tmp_path / name).write_bytes(b"plain text\n")
            message = "not a readable pickle"
        with pytest.raises(gio.PickleRefusedError, match=message) as info:
            gio.restricted_pickle_load(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)
        assert isinstance(info.value, ValueError) and isinstance(info.value, pickle.UnpicklingError)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        gio.restricted_pickle_load(tmp_path / "missing.pkl")
