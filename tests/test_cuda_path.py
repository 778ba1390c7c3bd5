"""The CUDA path end to end: the custom ops, their fake and autograd implementations, the first-use check, the
fallback and its warnings, the caches and the dtype pairs.

Every test runs twice where it can: on CPU tensors with the host shim launcher (the very same carafe.cu built with
g++), so all of it runs in CI without a GPU, and on a real GPU with the CuPy launcher. Faults are injected
through the launcher seam.
"""

import shutil

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from carafe_ultra import CARAFE, CARAFEDown, carafe, carafe_downsample
from carafe_ultra.backends import (
    BACKEND_VARIABLE,
    carafe_cuda,
    carafe_downsample_cuda,
    carafe_downsample_torch,
    select_backend,
)
from carafe_ultra.backends.cuda_backend import (
    carafe_backward,
    carafe_down_backward,
    carafe_down_forward,
    carafe_forward,
    use_launcher,
)
from carafe_ultra.backends.cupy_launcher import CupyLauncher, cupy_importable
from carafe_ultra.backends.kernel_variants import SELECTED, variant_sets
from carafe_ultra.backends.torch_backend import carafe_torch
from tests.helpers import DOWN_SHAPES, SHAPES, random_down_inputs, random_inputs
from tests.host_launcher import FaultyLauncher, HostShimLauncher
from tests.reference import carafe_downsample_reference, carafe_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PAIRS = [(f, m) for f in DTYPES for m in DTYPES]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return HostShimLauncher(tmp_path_factory.mktemp("shim"))


@pytest.fixture(params=["host-shim", "cuda"])
def path(request, shim, monkeypatch):
    """(device, launcher): the launcher counts launches and can be told to fail (``launcher.fault = ...``)."""
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    if request.param == "cuda":
        if not (torch.cuda.is_available() and cupy_importable()):
            pytest.skip("needs a CUDA GPU and CuPy")
        device, inner = torch.device("cuda"), CupyLauncher()
    else:
        if shutil.which("g++") is None:
            pytest.skip("needs g++")
        device, inner = torch.device("cpu"), shim
    with use_launcher(FaultyLauncher(inner)) as launcher:
        yield device, launcher


def inputs(shape, device, feature_dtype=torch.float32, mask_dtype=torch.float32, requires_grad=True,
           make=random_inputs):
    features, masks = make(*shape)
    return (features.to(device, feature_dtype).requires_grad_(requires_grad),
            masks.to(device, mask_dtype).requires_grad_(requires_grad))


def down_inputs(shape, device, feature_dtype=torch.float32, mask_dtype=torch.float32, requires_grad=True):
    return inputs(shape, device, feature_dtype, mask_dtype, requires_grad, make=random_down_inputs)


def test_dispatches_to_the_kernels(path):
    device, _ = path
    features, masks = inputs(SHAPES[0], device, torch.float16, torch.float32)
    assert select_backend(features, masks) is carafe_cuda
    assert select_backend(features.double(), masks.double()) is carafe_torch  # float64: the PyTorch path


@pytest.mark.parametrize("dtypes", PAIRS, ids=lambda p: f"{dtype_name(p[0])}-{dtype_name(p[1])}")
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], (2, 130, 3, 4, 3, 1, 2)], ids=str)
def test_every_dtype_pair_matches_the_reference_without_conversions(path, shape, dtypes):
    device, launcher = path
    _, _, _, _, k, g, s = shape
    features, masks = inputs(shape, device, *dtypes)
    out = carafe(features, masks, k, g, s)
    grad_out = torch.randn_like(out)
    grad_features, grad_masks = torch.autograd.grad(out, (features, masks), grad_out)
    f64, m64 = (t.detach().cpu().double().requires_grad_() for t in (features, masks))
    want = carafe_reference(f64, m64, k, g, s)
    want_grads = torch.autograd.grad(want, (f64, m64), grad_out.cpu().double())
    for got, expected, dtype in ((out, want, dtypes[0]), (grad_features, want_grads[0], dtypes[0]),
                                 (grad_masks, want_grads[1], dtypes[1])):
        assert got.dtype == dtype and got.device.type == device.type
        tol = TOLERANCE[dtype] if dtype == dtypes[1] or dtypes[0] == dtypes[1] else max(TOLERANCE[d] for d in dtypes)
        torch.testing.assert_close(got.cpu().double(), expected.detach(), rtol=tol, atol=tol)
    # The kernels took both tensors as they came: no full-size conversion to a common dtype.
    assert launcher.dtypes[-3] == (dtypes[0], dtypes[1], dtypes[0])  # the real forward, after the check


# Each operation: the op, its inputs, the prefix of its kernels' launch names, and a shape for second-order gradients.
OPERATIONS = {"upsampling": (carafe, inputs, "", (2, 4, 3, 5, 3, 2, 2)),
              "downsampling": (carafe_downsample, down_inputs, "down_", (2, 4, 7, 5, 3, 2, 2))}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_gradients_nobody_asked_for_are_not_computed(path, operation):
    device, launcher = path
    op, make_inputs, prefix, _ = OPERATIONS[operation]
    features, masks = make_inputs((2, 4, 5, 7, 3, 1, 2), device)
    op(features, masks.detach(), 3, 1, 2).sum().backward()  # warms up (first-use check) too
    launcher.launches.clear()
    op(features, masks.detach(), 3, 1, 2).sum().backward()
    assert launcher.launches == {f"{prefix}forward": 1, f"{prefix}backward_features": 1}
    launcher.launches.clear()
    op(features.detach(), masks, 3, 1, 2).sum().backward()
    assert launcher.launches == {f"{prefix}forward": 1, f"{prefix}backward_masks": 1}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_second_order_gradients_match_the_pytorch_path(path, operation):
    device, _ = path
    op, make_inputs, _, shape = OPERATIONS[operation]
    results = []
    for backend in ("auto", "torch"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(BACKEND_VARIABLE, backend)
            torch.manual_seed(1)
            features, masks = make_inputs(shape, device)
            out = op(features, masks, 3, 2, 2)
            grad_out = torch.randn_like(out, requires_grad=True)
            a, b = torch.randn_like(features), torch.randn_like(masks)
            grad_features, grad_masks = torch.autograd.grad(out, (features, masks), grad_out, create_graph=True)
            loss = (grad_features * a).sum() + (grad_masks * b).sum()
            results.append(torch.autograd.grad(loss, (features, masks, grad_out)))
    for kernels, reference in zip(*results):
        torch.testing.assert_close(kernels, reference, rtol=1e-4, atol=1e-4)


def test_opcheck_forward_and_backward(path):
    device, _ = path
    features, masks = inputs((2, 8, 5, 6, 3, 2, 2), device)
    grad_out = torch.randn(2, 8, 10, 12, device=device)
    torch.library.opcheck(carafe_forward, (features, masks, 3, 2, 2))
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(carafe_backward, (grad_out.requires_grad_(), features, masks, 3, 2, 2, *need))


def test_fake_implementations_give_shapes_and_dtypes():
    with FakeTensorMode():
        features, masks = torch.empty(2, 8, 5, 6, dtype=torch.float16), torch.empty(2, 2 * 9, 15, 18)
        out = carafe_forward(features, masks, 3, 2, 3)
        grads = carafe_backward(torch.empty(2, 8, 15, 18, dtype=torch.float16), features, masks, 3, 2, 3, True, False)
    assert out.shape == (2, 8, 15, 18) and out.dtype == torch.float16
    assert grads[0].shape == features.shape and grads[0].dtype == torch.float16 and grads[1].numel() == 0


def test_torch_compile_without_graph_break(path):
    device, _ = path
    module = CARAFE(16, kernel_size=3).to(device)
    x = torch.randn(2, 16, 6, 5, device=device, requires_grad=True)
    expected = module(x)
    torch._dynamo.reset()
    out = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and module.encoder.weight.grad is not None


def test_autocast_hands_mixed_dtypes_to_the_kernels_unconverted(path):
    device, launcher = path
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    module = CARAFE(8, 16, kernel_size=3).to(device)
    x = torch.randn(2, 8, 5, 5, device=device)
    with torch.autocast(device.type, dtype=dtype):
        out = module(x)
        masks_dtype = module.masks(x).dtype
    assert out.dtype == dtype
    if device.type == "cuda":
        assert masks_dtype == torch.float32  # CUDA autocast runs the softmax in float32: mixed dtypes
    assert launcher.dtypes[-1] == (dtype, masks_dtype, dtype)  # both as autocast made them, unconverted
    torch.testing.assert_close(out.float(), module(x), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("table", variant_sets(), ids=lambda t: "-".join(t.values()))
def test_the_table_picks_the_variants_and_the_first_use_check_covers_them(path, table, monkeypatch):
    device, launcher = path
    for kernel, name in table.items():
        monkeypatch.setitem(SELECTED, kernel, name)
    features, masks = inputs(SHAPES[1], device)
    out = carafe(features, masks, 5, 3, 3)
    grads = torch.autograd.grad(out, (features, masks), torch.ones_like(out))
    ran = {f"{kernel}_{name}" for kernel, name in table.items()}
    assert set(launcher.variants) == ran and len(launcher.variants) == 6  # the check's three launches, then ours
    f64, m64 = (t.detach().cpu().double().requires_grad_() for t in (features, masks))
    want = carafe_reference(f64, m64, 5, 3, 3)
    for got, expected in zip((out, *grads), (want, *torch.autograd.grad(want, (f64, m64), torch.ones_like(want)))):
        torch.testing.assert_close(got.cpu().double(), expected.detach(), rtol=1e-4, atol=1e-4)


def test_first_use_check_runs_once_per_specialisation(path):
    device, launcher = path
    features, masks = inputs(SHAPES[0], device, requires_grad=False)
    carafe(features, masks, 3, 1, 2)
    assert launcher.launches == {"forward": 2, "backward_masks": 1, "backward_features": 1}  # check + call
    carafe(features, masks, 3, 1, 2)
    assert launcher.launches["forward"] == 3 and launcher.launches["backward_masks"] == 1
    carafe(features.half(), masks, 3, 1, 2)  # another dtype pair: checked on its first use
    assert launcher.launches["forward"] == 5 and launcher.launches["backward_masks"] == 2


FAULTS = {"compile": "compile failure: injected compile fault. NVRTC could not build the kernels",
          "library": "library failure: injected library fault. CuPy could not load a CUDA library",
          "launch": "launch failure: injected launch fault. The GPU or its driver refused the kernels",
          "wrong": "wrong numbers: the output differs from the PyTorch path by up to 0.5 .*This is a kernel bug",
          "nan": "wrong numbers: NaN in the masks gradient where the PyTorch path has none. This is a kernel bug"}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_specialisation_warns_once_and_runs_the_pytorch_path(path, fault, recwarn):
    device, launcher = path
    launcher.fault, launcher.affects = fault, lambda spec: spec.kernel_size == 3
    features, masks = inputs(SHAPES[0], device)
    with pytest.warns(RuntimeWarning) as caught:
        out = carafe(features, masks, 3, 1, 2)
    (warning,) = caught
    message = str(warning.message)
    assert (f"the CUDA upsampling kernels failed for features float32, masks float32, kernel_size 3, scale_factor 2 (variants: "
            f"forward pixel, backward_masks pixel, backward_features gather) on {device}") in message
    assert pytest.importorskip("re").search(FAULTS[fault], message)
    assert "runs the PyTorch path for the rest of the process" in message and "CARAFE_ULTRA_BACKEND=torch" in message
    # The user's results are the PyTorch path's.
    grads = torch.autograd.grad(out, (features, masks), torch.ones_like(out))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BACKEND_VARIABLE, "torch")
        expected = carafe(features, masks, 3, 1, 2)
        expected_grads = torch.autograd.grad(expected, (features, masks), torch.ones_like(expected))
    for got, want in zip((out, *grads), (expected, *expected_grads)):
        assert torch.equal(got, want)
    # From now on this specialisation never reaches the kernels, and says nothing more.
    launched = sum(launcher.launches.values())
    recwarn.clear()
    carafe(features, masks, 3, 1, 2).sum().backward()
    assert sum(launcher.launches.values()) == launched and not recwarn.list
    # Other specialisations still run the kernels.
    five = inputs(SHAPES[1], device, requires_grad=False)
    carafe(*five, 5, 3, 3)
    assert sum(launcher.launches.values()) > launched and not recwarn.list


@pytest.mark.parametrize("fault", ["compile", "wrong"])
def test_forcing_the_kernels_turns_a_failure_into_an_error(path, fault, monkeypatch):
    device, launcher = path
    launcher.fault = fault
    monkeypatch.setenv(BACKEND_VARIABLE, "cupy")
    features, masks = inputs(SHAPES[0], device, requires_grad=False)
    for _ in range(2):  # every call, not just the first
        with pytest.raises(RuntimeError, match=r"CARAFE_ULTRA_BACKEND=cupy, but the CUDA upsampling kernels failed for "
                                               r"features float32, masks float32, kernel_size 3, scale_factor 2 "
                                               r"\(variants: forward pixel"):
            carafe(features, masks, 3, 1, 2)


def test_a_failure_after_the_check_also_falls_back(path):
    device, launcher = path
    features, masks = inputs(SHAPES[0], device, requires_grad=False)
    carafe(features, masks, 3, 1, 2)  # passes its check
    launcher.fault = "launch"
    with pytest.warns(RuntimeWarning, match="launch failure: injected launch fault"):
        out = carafe(features, masks, 3, 1, 2)
    torch.testing.assert_close(out, carafe_torch(features, masks, 3, 1, 2), rtol=0, atol=0)


def test_forcing_the_kernels_where_they_cannot_run(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "cupy")
    features, masks = inputs(SHAPES[0], torch.device("cpu"), requires_grad=False)
    with pytest.raises(ValueError, match=r"CARAFE_ULTRA_BACKEND=cupy, but the CUDA kernels need CUDA tensors, got cpu"):
        carafe(features, masks, 3, 1, 2)
    with pytest.raises(ValueError, match=r"CARAFE_ULTRA_BACKEND=cupy, but the CUDA kernels take float32, float16 or "
                                         r"bfloat16, got torch.float64 features"):
        carafe(features.double(), masks, 3, 1, 2)


def library_missing():
    try:
        raise OSError("libnvrtc.so.12: cannot open shared object file")
    except OSError as cause:
        raise RuntimeError("CuPy failed to load libnvrtc.so.12") from cause


@pytest.mark.parametrize("raised,kind", [("compile", "compile"), ("library", "library"), ("driver", "launch")])
def test_cupy_launcher_names_the_step_that_failed(raised, kind, monkeypatch):
    compiler = pytest.importorskip("cupy.cuda.compiler")
    from carafe_ultra.backends import cupy_launcher
    from carafe_ultra.backends.kernel_types import KernelError, Specialisation

    def failing(*args):
        if raised == "compile":
            raise compiler.CompileException("error: identifier undefined", "carafe.cu", "carafe", {}, "")
        if raised == "library":
            library_missing()
        raise RuntimeError("CUDA_ERROR_NO_DEVICE")

    monkeypatch.setattr(cupy_launcher, "_kernel", failing)
    with pytest.raises(KernelError) as caught:
        cupy_launcher.CupyLauncher().launch(Specialisation(torch.float32, torch.float32, 3, 2), "forward", (1, 1), 128,
                                            (torch.empty(1),))
    assert caught.value.kind == kind


# CARAFE++ downsampling: the same path, with its own ops and its own first-use check per specialisation.


def test_downsampling_dispatches_to_its_kernels(path):
    device, _ = path
    features, masks = down_inputs(DOWN_SHAPES[0], device, torch.float16, torch.float32)
    assert select_backend(features, masks, downsample=True) is carafe_downsample_cuda
    assert select_backend(features.double(), masks.double(), downsample=True) is carafe_downsample_torch


@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.float16, torch.float32), (torch.bfloat16,) * 2],
                         ids=lambda p: f"{dtype_name(p[0])}-{dtype_name(p[1])}")
@pytest.mark.parametrize("shape", [DOWN_SHAPES[1], DOWN_SHAPES[2], (2, 130, 7, 6, 3, 1, 2)], ids=str)
def test_downsampling_matches_the_reference_without_conversions(path, shape, dtypes):
    device, launcher = path
    k, g, s = shape[4:]
    features, masks = down_inputs(shape, device, *dtypes)
    out = carafe_downsample(features, masks, k, g, s)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (features, masks), grad_out)
    f64, m64 = (t.detach().cpu().double().requires_grad_() for t in (features, masks))
    want = carafe_downsample_reference(f64, m64, k, g, s)
    want_grads = torch.autograd.grad(want, (f64, m64), grad_out.cpu().double())
    for got, expected, dtype in zip((out, *grads), (want, *want_grads), (dtypes[0], *dtypes)):
        assert got.dtype == dtype and got.device.type == device.type
        tol = max(TOLERANCE[d] for d in dtypes)
        torch.testing.assert_close(got.cpu().double(), expected.detach(), rtol=tol, atol=tol)
    assert launcher.dtypes[-3] == (dtypes[0], dtypes[1], dtypes[0])  # the real forward, after the check
    assert {name for name in launcher.launches} == {"down_forward", "down_backward_masks", "down_backward_features"}


def test_downsampling_opcheck_and_fake_shapes(path):
    device, _ = path
    features, masks = down_inputs((2, 8, 7, 6, 3, 2, 2), device)
    grad_out = torch.randn(2, 8, 4, 3, device=device)
    torch.library.opcheck(carafe_down_forward, (features, masks, 3, 2, 2))
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(carafe_down_backward, (grad_out.requires_grad_(), features, masks, 3, 2, 2, *need))
    with FakeTensorMode():
        fake = carafe_down_forward(torch.empty(2, 8, 7, 6, dtype=torch.float16), torch.empty(2, 18, 3, 2), 3, 2, 3)
    assert fake.shape == (2, 8, 3, 2) and fake.dtype == torch.float16


def test_each_operation_has_its_own_first_use_check_and_fallback(path, recwarn):
    device, launcher = path
    launcher.fault, launcher.affects = "wrong", lambda spec: True
    up = inputs(SHAPES[0], device, requires_grad=False)
    down = down_inputs(DOWN_SHAPES[0], device, requires_grad=False)  # the same specialisation: k 3, s 2, float32
    with pytest.warns(RuntimeWarning, match="the CUDA downsampling kernels failed for features float32, masks "
                                            "float32, kernel_size 3, scale_factor 2"):
        out = carafe_downsample(*down, 3, 1, 2)
    torch.testing.assert_close(out, carafe_downsample_torch(*down, 3, 1, 2), rtol=0, atol=0)
    launcher.fault = None
    carafe(*up, 3, 1, 2)  # the upsampling kernels of the same module still run: their own check passes
    assert launcher.launches["forward"] == 2 and launcher.launches["down_forward"] == 1
    carafe_downsample(*down, 3, 1, 2)  # and the failed downsampling specialisation stays on the PyTorch path
    assert launcher.launches["down_forward"] == 1


def test_carafe_down_module_compiles_without_graph_break_and_takes_autocast_dtypes(path):
    device, launcher = path
    module = CARAFEDown(8, 16, kernel_size=3, group_size=2).to(device)
    x = torch.randn(2, 8, 9, 7, device=device, requires_grad=True)
    expected = module(x)
    torch._dynamo.reset()
    out = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and module.encoder.weight.grad is not None
    assert launcher.launches["down_forward"] >= 2 and launcher.launches["down_backward_features"] >= 1
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    low = x.detach().to(dtype)  # as the conv before it hands it over under autocast
    with torch.autocast(device.type, dtype=dtype):
        out = module(low)
        masks_dtype = module.masks(low).dtype
    assert out.dtype == dtype
    assert launcher.dtypes[-1] == (dtype, masks_dtype, dtype)  # both as autocast made them, unconverted
