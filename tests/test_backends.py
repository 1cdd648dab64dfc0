import pytest

from geoattn import backends


def test_forced_backend_validates(monkeypatch):
    monkeypatch.setenv("GEOATTN_BACKEND", "cpu")
    assert backends.forced_backend() == "cpu"
    monkeypatch.setenv("GEOATTN_BACKEND", "")
    assert backends.forced_backend() is None
    monkeypatch.setenv("GEOATTN_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="GEOATTN_BACKEND must be one of"):
        backends.forced_backend()


def test_describe_has_core_versions():
    info = backends.describe()
    assert info["torch"] and info["python"]
    assert info["scatter backend"] in ("native torch",) or info["scatter backend"].startswith("torch_scatter")


def test_cpu_native_bf16_is_a_cached_bool():
    assert isinstance(backends.cpu_native_bf16(), bool)
    assert backends.cpu_native_bf16() is backends.cpu_native_bf16()
