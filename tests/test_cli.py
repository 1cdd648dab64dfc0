import subprocess
import sys

import pytest

from geoattn import cli


def test_info_prints_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("geoattn", "python", "torch", "torch_geometric", "scatter backend", "neighbour backend",
                "spconv", "triton", "cuda device"):
        assert any(line.startswith(key) for line in out.splitlines()), key


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "geoattn.cli", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout


def test_unknown_command_exits_non_zero():
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["no-such-command"])
    assert excinfo.value.code != 0


def test_info_refuses_an_unknown_backend_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("GEOATTN_BACKEND", "bogus")
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert "GEOATTN_BACKEND" in err and "'bogus'" in err and err.count("\n") == 1
