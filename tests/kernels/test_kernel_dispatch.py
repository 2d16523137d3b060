"""Backend choice: auto, explicit, env override, export; import hygiene; signature parity."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stvm_sdk.kernels as kernels
from stvm_sdk.errors import BackendUnavailableError, ConfigError
from stvm_sdk.kernels import dispatch, exporting, mocm_blend, proxy_reliability, weighted_cross_entropy
from stvm_sdk.kernels.mocm_ref import mocm_blend_ref
from stvm_sdk.kernels.reliability_ref import proxy_reliability_ref
from stvm_sdk.kernels.weighted_ce_ref import weighted_cross_entropy_ref

REPO = Path(__file__).resolve().parents[2]
OPS = [
    (weighted_cross_entropy, weighted_cross_entropy_ref, "weighted_ce", "weighted_cross_entropy_triton"),
    (proxy_reliability, proxy_reliability_ref, "reliability", "proxy_reliability_triton"),
    (mocm_blend, mocm_blend_ref, "mocm", "mocm_blend_triton"),
]


def _ce_inputs(device: str = "cpu", dtype: torch.dtype = torch.float32):
    return (
        torch.randn(1, 3, 2, 2, dtype=dtype, device=device),
        torch.zeros(1, 2, 2, dtype=torch.long),
        torch.ones(1, 2, 2),
    )


@pytest.fixture
def no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU machine without TRITON_INTERPRET: what users and the method tests see."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture
def triton_must_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any op reaches a Triton kernel module."""

    def boom(op: str):
        raise AssertionError(f"Triton module {op!r} was loaded")

    monkeypatch.setattr("stvm_sdk.kernels.ops.load_triton_module", boom)


def test_importing_kernels_and_running_auto_on_cpu_does_not_import_triton():
    code = (
        "import sys, torch; import stvm_sdk.kernels as k; "
        "k.weighted_cross_entropy(torch.randn(1,3,2,2), torch.zeros(1,2,2,dtype=torch.long), "
        "torch.ones(1,2,2)); "
        "assert 'triton' not in sys.modules, 'triton imported'"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_auto_on_cpu_picks_the_reference(no_interpreter, triton_must_not_load):
    x, y, w = _ce_inputs()
    assert dispatch.resolve_backend("auto", (x, y, w)) == "torch"
    weighted_cross_entropy(x, y, w)  # would raise through triton_must_not_load


def test_auto_on_cpu_picks_the_reference_even_with_the_interpreter_on(monkeypatch, triton_must_not_load):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, y, w = _ce_inputs()
    assert dispatch.resolve_backend("auto", (x, y, w), (x,)) == "torch"
    weighted_cross_entropy(x, y, w)


def test_auto_on_float64_picks_the_reference_even_where_triton_runs(device, triton_must_not_load, triton_ok):
    x, y, w = (t.to(device) for t in _ce_inputs(dtype=torch.float64))
    assert dispatch.resolve_backend("auto", (x, y, w), (x,)) == "torch"


@pytest.mark.gpu
def test_auto_on_cuda_picks_triton(cuda, triton_ok):
    x, y, w = (t.to(cuda) for t in _ce_inputs())
    assert dispatch.resolve_backend("auto", (x, y, w), (x,)) == "triton"


def test_explicit_triton_on_cpu_without_interpreter_raises_a_clear_error(no_interpreter):
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors.*backend='torch'"):
        weighted_cross_entropy(*_ce_inputs(), backend="triton")


def test_explicit_triton_without_triton_installed_raises_with_install_hint(monkeypatch):
    monkeypatch.setattr(
        dispatch, "_triton_import_error", lambda: "ModuleNotFoundError: No module named 'triton'"
    )
    with pytest.raises(BackendUnavailableError, match="does not import.*install"):
        proxy_reliability(
            torch.randn(1, 4, 2, 2),
            torch.randn(3, 4),
            torch.zeros(1, 2, 2, dtype=torch.long),
            backend="triton",
        )


def test_env_variable_overrides_auto_and_is_held_to_the_explicit_rules(monkeypatch, no_interpreter):
    x, y, w = _ce_inputs()
    monkeypatch.setenv(dispatch.ENV_BACKEND, "triton")
    with pytest.raises(BackendUnavailableError, match="STVM_KERNEL_BACKEND=triton"):
        weighted_cross_entropy(x, y, w)
    assert dispatch.resolve_backend("torch", (x,)) == "torch"  # an explicit argument still wins
    monkeypatch.setenv(dispatch.ENV_BACKEND, "cuda")
    with pytest.raises(ConfigError, match="STVM_KERNEL_BACKEND"):
        weighted_cross_entropy(x, y, w)


def test_unknown_backend_name_is_a_config_error():
    with pytest.raises(ConfigError, match="auto"):
        weighted_cross_entropy(*_ce_inputs(), backend="cuda")


def test_exporting_context_forces_the_reference_even_when_triton_is_asked(triton_must_not_load):
    x, y, w = _ce_inputs()
    with exporting():
        with exporting():  # nestable
            assert dispatch.is_exporting()
        loss = weighted_cross_entropy(x, y, w, backend="triton")
    assert not dispatch.is_exporting()
    torch.testing.assert_close(loss, weighted_cross_entropy_ref(x, y, w))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_tracing_forces_the_reference(triton_must_not_load):
    emb, proxies, labels = torch.randn(1, 4, 3, 3), torch.randn(5, 4), torch.zeros(1, 3, 3, dtype=torch.long)
    fn = lambda e: proxy_reliability(e, proxies, labels, backend="triton")[0]  # noqa: E731
    traced = torch.jit.trace(fn, (emb,), check_trace=False)
    torch.testing.assert_close(traced(emb), proxy_reliability_ref(emb, proxies, labels)[0])


@pytest.mark.parametrize(("public", "ref", "module", "name"), OPS, ids=[o[2] for o in OPS])
def test_triton_and_reference_signatures_match_and_public_adds_backend(public, ref, module, name, triton_ok):
    triton_fn = getattr(dispatch.load_triton_module(module), name)
    assert inspect.signature(triton_fn) == inspect.signature(ref)
    pub = inspect.signature(public).parameters
    assert list(pub)[:-1] == list(inspect.signature(ref).parameters)
    assert pub["backend"].default == "auto" and pub["backend"].kind is inspect.Parameter.KEYWORD_ONLY


def test_package_exports_exactly_the_public_ops():
    assert {"weighted_cross_entropy", "proxy_reliability", "mocm_blend", "exporting"} <= set(kernels.__all__)


class _Reliability(torch.nn.Module):
    def forward(self, emb: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return proxy_reliability(emb, proxies, labels, backend="triton")[0]


@pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::UserWarning"
)
def test_onnx_export_uses_the_reference(tmp_path, triton_must_not_load):
    pytest.importorskip("onnx")
    args = (torch.randn(1, 4, 3, 3), torch.randn(5, 4), torch.zeros(1, 3, 3, dtype=torch.long))
    path = tmp_path / "rel.onnx"
    torch.onnx.export(_Reliability(), args, str(path), dynamo=False, opset_version=17)
    assert path.stat().st_size > 0
