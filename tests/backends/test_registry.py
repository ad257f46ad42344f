"""choose_backend: vLLM only with a GPU, vllm importable and a vllm source; clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.backends import registry
from lokal.backends.errors import BackendUnavailable
from lokal.backends.hardware import Hardware, _visible
from lokal.backends.spec import ModelSpec

GPU = Hardware(("NVIDIA H100",), "1 NVIDIA GPU(s) visible")
CPU = Hardware((), "NVML reports no GPU")


def spec(**kw: object) -> ModelSpec:
    return ModelSpec.model_validate({"id": "m", "gguf": {"path": "/x.gguf"}, **kw})


@pytest.fixture()
def vllm_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = registry._importable
    monkeypatch.setattr(registry, "_importable", lambda m: True if m == "vllm" else real(m))


def test_cpu_machine_picks_llamacpp_and_says_why() -> None:
    engine, reason = registry.choose_backend(spec(vllm={"model": "/hf"}), CPU)
    assert engine == "llamacpp"
    assert "NVML reports no GPU" in reason


def test_gpu_without_vllm_source_picks_llamacpp(vllm_importable: None) -> None:
    engine, reason = registry.choose_backend(spec(), GPU)
    assert engine == "llamacpp"
    assert "names no vllm source" in reason


def test_gpu_with_vllm_and_source_picks_vllm(vllm_importable: None) -> None:
    engine, reason = registry.choose_backend(spec(vllm={"model": "/hf"}), GPU)
    assert engine == "vllm"
    assert "H100" in reason


def test_gpu_without_vllm_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_importable", lambda m: m != "vllm")
    engine, reason = registry.choose_backend(spec(vllm={"model": "/hf"}), GPU)
    assert engine == "llamacpp"
    assert "vllm is not installed" in reason


def test_forced_vllm_without_source_is_a_clear_error(vllm_importable: None) -> None:
    with pytest.raises(BackendUnavailable, match="names no `vllm` source"):
        registry.choose_backend(spec(), GPU, forced="vllm")


def test_no_engine_at_all_is_one_clear_message() -> None:
    only_vllm = ModelSpec.model_validate({"id": "m", "vllm": {"model": "/hf"}})
    with pytest.raises(BackendUnavailable, match="no GGUF source"):
        registry.choose_backend(only_vllm, CPU)


def test_spec_needs_a_source() -> None:
    with pytest.raises(ValueError, match="names no source"):
        ModelSpec.model_validate({"id": "m"})


@pytest.mark.parametrize(("env", "expected"), [
    (None, [0, 1, 2]), ("", []), ("1", [1]), ("2,0", [2, 0]), ("-1", []), ("0,-1,1", [0]),
    ("7", []),
])
def test_cuda_visible_devices(env: str | None, expected: list[int]) -> None:
    assert _visible([0, 1, 2], env) == expected


def test_probe_on_this_machine_finds_no_gpu() -> None:
    from lokal.backends.hardware import probe

    hw = probe()
    assert not hw.has_nvidia_gpu and hw.device == "cpu" and hw.note


def test_vllm_footprint_on_a_gpu_is_its_share_of_each_gpu_or_weights_plus_kv(
        tmp_path: Path) -> None:
    from lokal.backends.footprint import vllm_footprint

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4000)
    spec = ModelSpec.model_validate({"id": "m", "vllm": {"model": str(tmp_path)}})
    gpu = Hardware(("H200",), "test", gpu_memory=140 * 10**9)
    args: dict[str, object] = {"model": str(tmp_path), "gpu_memory_utilization": 0.5}
    assert vllm_footprint(spec, args, gpu).total == 70 * 10**9
    assert vllm_footprint(spec, args, gpu).device == "gpu"
    sized = vllm_footprint(spec, {"model": str(tmp_path), "kv_cache_memory_bytes": 10**9,
                                  "tensor_parallel_size": 2}, gpu)
    assert (sized.weights, sized.kv_cache) == (2000, 10**9)
    cpu = vllm_footprint(spec, {"model": str(tmp_path), "dtype": "float32",
                                "kv_cache_memory_bytes": 10**9}, Hardware((), "test"))
    assert (cpu.device, cpu.weights, cpu.kv_cache) == ("cpu", 8000, 10**9)
