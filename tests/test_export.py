"""Deployment (`ltp_core.deploy.export`): the plain state_dict of a finalized model, the compact
sparse file (exact round trip, size that follows the nonzero count, safe loading, clear
errors, atomic writes), ONNX export (skipped without onnx), and CSR inference."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torchvision
from torch import nn

from ltp_core import LTP
from ltp_core.deploy import export as ex
from ltp_core.deploy.export import (
    SparseFormatError,
    SparseLinear,
    compare_inference,
    export_onnx,
    load_sparse,
    onnx_available,
    onnx_forward,
    plain_state_dict,
    save_sparse,
    sparse_summary,
    to_sparse_inference,
)
from ltp_core.models import mlp, small_cnn

needs_onnx = pytest.mark.skipif(not onnx_available(), reason=f"needs onnx + onnxscript ({ex.ONNX_INSTALL_HINT})")


def _pruned(model: nn.Module, sparsity: float, seed: int = 0) -> LTP:
    """LTP attached and its thresholds projected to `sparsity` at once (no training needed)."""
    torch.manual_seed(seed)
    ltp = LTP(model, target_sparsity=sparsity, target_pace=1.0)
    ltp.after_step()
    return ltp


def _dense_size(state: dict, path) -> int:
    torch.save(state, path)
    return os.path.getsize(path)


def _assert_equal_states(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# -- finalize: a plain state_dict --------------------------------------------------------------

def test_finalized_torchvision_model_loads_strictly_into_the_plain_architecture(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()  # depthwise convs, BN, Linear
    ltp = _pruned(model, 0.8)
    hard = plain_state_dict(ltp)  # = ltp.hard_state_dict(), without touching the model
    x = torch.randn(2, 3, 32, 32)
    with ltp.hard_masks():
        expected = model(x)
    ltp.finalize()
    final = plain_state_dict(model)
    _assert_equal_states(final, hard)
    plain = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    plain.load_state_dict(final, strict=True)
    assert torch.equal(plain(x), expected)
    # and through the sparse file
    save_sparse(model, tmp_path / "m.ltps")
    again = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    again.load_state_dict(load_sparse(tmp_path / "m.ltps"), strict=True)
    assert torch.equal(again(x), expected)


def test_timm_model_round_trip(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("mixnet_s", pretrained=False, num_classes=5).eval()
    _pruned(model, 0.9).finalize()
    save_sparse(model, tmp_path / "mixnet.ltps")
    plain = timm.create_model("mixnet_s", pretrained=False, num_classes=5)
    plain.load_state_dict(load_sparse(tmp_path / "mixnet.ltps"), strict=True)


def test_plain_state_dict_refuses_a_parametrized_model():
    model = mlp(hidden=(8,))
    LTP(model)
    with pytest.raises(ValueError, match=r"finalize\(\)"):
        plain_state_dict(model)
    with pytest.raises(ValueError, match=r"finalize\(\)"):
        save_sparse(model, "unused.ltps")
    with pytest.raises(TypeError, match="state_dict"):
        plain_state_dict([1, 2])
    with pytest.raises(TypeError, match="maps names to tensors"):
        plain_state_dict({"a": 1.0})


# -- the sparse file ------------------------------------------------------------------------

def test_round_trip_is_exact_and_in_order(tmp_path):
    model = small_cnn(channels=(8, 16))  # conv, batch norm (running stats, an int64 counter), Linear
    ltp = _pruned(model, 0.9)
    model.train()
    model(torch.randn(4, 1, 8, 8))  # batch-norm statistics move off their initial values
    state = plain_state_dict(ltp)
    path = save_sparse(ltp, tmp_path / "net.ltps")
    back = load_sparse(path)
    _assert_equal_states(back, state)
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in back.values())
    # a plain torch.load with weights_only=True reads the file: nothing but data is unpickled
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "ltp-sparse" and raw["version"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_dtype_and_odd_layouts(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 29, generator=g).to(dtype)
    w[torch.rand(37, 29, generator=g) < 0.95] = 0
    w[0, 0] = -0.0
    conv = torch.randn(8, 4, 3, 3, generator=g).to(dtype)
    conv[conv.abs() < 1.5] = 0
    state = {
        "weight": w,
        "transposed": w.t(),  # a non-contiguous view
        "channels_last": conv.contiguous(memory_format=torch.channels_last),
        "scalar": torch.tensor(3.5, dtype=dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
        "all_zero": torch.zeros(100, dtype=dtype),
        "dense_bias": torch.randn(29, generator=g).to(dtype),
        "counter": torch.tensor(17),
        "flags": torch.tensor([True, False, True]),
        "sparse_ints": torch.zeros(1000, dtype=torch.int64).index_fill_(0, torch.tensor([3, 500]), 7),
    }
    save_sparse(state, tmp_path / "x.ltps")
    back = load_sparse(tmp_path / "x.ltps")
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


# Every dtype torch.save stores (those this torch has): the sparse encodings work on the bits,
# so unsigned, float8 and raw-bits dtypes, whose values torch cannot compare or scatter, round-trip.
ALL_DTYPES = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
              "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "int8", "int16", "int32", "int64", "uint8",
              "uint16", "uint32", "uint64", "bool", "complex32", "complex64", "complex128", "bits8", "bits16"]
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _random(dtype: torch.dtype, shape: tuple[int, ...], density: float, g: torch.Generator) -> torch.Tensor:
    """Random bit patterns of `dtype`, each element nonzero with probability `density`; never
    -0.0's pattern (the sign bit alone), whose sign the file does not keep."""
    keep = torch.rand(shape, generator=g) < density
    if dtype == torch.bool:
        return keep
    if dtype.itemsize not in _INT_OF_SIZE:  # complex128
        return torch.randn(shape, dtype=dtype, generator=g) * keep
    view = _INT_OF_SIZE[dtype.itemsize]
    raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * dtype.itemsize), dtype=torch.uint8, generator=g)
    bits = raw.view(view).masked_fill(raw.view(view) == torch.iinfo(view).min, 1)
    return bits.masked_fill(~keep, 0).view(dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT_OF_SIZE[t.element_size()]) if t.element_size() in _INT_OF_SIZE else t


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_every_dtype_torch_saves_round_trips_bit_for_bit(tmp_path, name):
    dtype = getattr(torch, name, None)
    if dtype is None:
        pytest.skip(f"this torch has no {name}")
    g = torch.Generator().manual_seed(0)
    sparse = _random(dtype, (40, 50), 0.01, g)
    state = {"sparse": sparse, "half": _random(dtype, (64, 64), 0.5, g), "dense": _random(dtype, (7, 3), 1.0, g),
             "transposed": sparse.t(), "empty": _random(dtype, (0, 4), 1.0, g)}
    save_sparse(state, tmp_path / "x.ltps")
    back = load_sparse(tmp_path / "x.ltps")
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == dtype and back[k].shape == v.shape and back[k].is_contiguous(), k
        assert torch.equal(_bits(back[k]), _bits(v)), k
    encodings = {r["name"]: r["encoding"] for r in sparse_summary(tmp_path / "x.ltps")}
    stored_dense = dtype == torch.bool or dtype.is_complex
    assert encodings["sparse"] == ("dense" if stored_dense else "indices")
    assert encodings["half"] == ("dense" if stored_dense else "bitmask")


def test_negative_zero_comes_back_as_zero_but_fnuz_nan_stays(tmp_path):
    # 0x80 is -0.0 in float8_e4m3fn (left out, back as +0.0), and NaN in the fnuz formats (kept)
    raw = torch.zeros(1000, dtype=torch.uint8).index_fill_(0, torch.arange(0, 1000, 100), 0x80)
    raw[7] = 0x3C
    state = {"fn": raw.view(torch.float8_e4m3fn), "fnuz": raw.view(torch.float8_e4m3fnuz),
             "f32": raw.to(torch.float32).neg() * 0}  # -0.0 and +0.0 in float32
    save_sparse(state, tmp_path / "z.ltps")
    back = load_sparse(tmp_path / "z.ltps")
    only_the_value = torch.zeros(1000, dtype=torch.uint8).index_fill_(0, torch.tensor([7]), 0x3C)
    assert torch.equal(back["fn"].view(torch.uint8), only_the_value)
    assert torch.equal(back["fnuz"].view(torch.uint8), raw)
    assert back["f32"].view(torch.int32).eq(0).all()
    rows = {r["name"]: r for r in sparse_summary(tmp_path / "z.ltps")}
    assert (rows["fn"]["stored"], rows["fnuz"]["stored"], rows["f32"]["encoding"]) == (1, 11, "indices")


def test_quantized_and_sparse_layout_tensors_are_stored_dense(tmp_path):
    g = torch.Generator().manual_seed(0)
    scales, zero_points = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 1, 2, 3])
    state = {"q": torch.quantize_per_tensor(torch.randn(6, 4, generator=g), 0.1, 3, torch.qint8).t(),
             "q_channel": torch.quantize_per_channel(torch.randn(4, 3, generator=g), scales, zero_points, 0,
                                                     torch.quint8),
             "q4": torch.quantize_per_tensor(torch.tensor([0.0, 1.0, 2.0, 0.5] * 4), 0.5, 1, torch.quint4x2),
             "coo": torch.eye(3).to_sparse(), "csr": torch.eye(4, dtype=torch.float64).to_sparse_csr()}
    save_sparse(state, tmp_path / "q.ltps")
    back = load_sparse(tmp_path / "q.ltps")
    for k in ("q", "q_channel", "q4"):
        assert back[k].dtype == state[k].dtype and back[k].qscheme() == state[k].qscheme(), k
        assert torch.equal(back[k].int_repr(), state[k].int_repr()) and back[k].is_contiguous(), k
        assert torch.equal(back[k].dequantize(), state[k].dequantize()), k
    for k in ("coo", "csr"):
        assert back[k].layout == state[k].layout and torch.equal(back[k].to_dense(), state[k].to_dense()), k
    assert {r["encoding"] for r in sparse_summary(tmp_path / "q.ltps")} == {"dense"}


def test_a_dtype_torch_save_cannot_store_is_refused_before_writing(tmp_path):
    int4 = getattr(torch, "int4", None)
    if int4 is None:
        pytest.skip("this torch has no int4")
    with pytest.raises(TypeError, match=r"tensor 'packed' has dtype torch.int4, which torch.save cannot store; "
                                        r"save_sparse stores .*float32.*uint16"):
        save_sparse({"bias": torch.zeros(3), "packed": torch.empty(4, dtype=int4)}, tmp_path / "x.ltps")
    assert list(tmp_path.iterdir()) == []


def test_files_of_the_first_writer_still_load(tmp_path):
    # payloads as version 1 wrote them: values in the tensor's dtype, bitmask bytes, int32 indices
    # (the uint16 one it wrote, but could not read back: no index_put for uint16)
    w = torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, -2.0]])
    u = torch.zeros(40, dtype=torch.int16).index_fill_(0, torch.tensor([3]), -1).index_fill_(0, torch.tensor([39]), 7)
    u = u.view(torch.uint16)  # 65535 at 3, 7 at 39 (built as int16: no index_put for uint16)
    tensors = [{"name": "w", "shape": [2, 3], "dtype": "float32", "encoding": "bitmask",
                "mask": torch.tensor([0b100010], dtype=torch.uint8), "values": torch.tensor([1.5, -2.0])},
               {"name": "u", "shape": [40], "dtype": "uint16", "encoding": "indices",
                "indices": torch.tensor([3, 39], dtype=torch.int32),
                "values": torch.tensor([-1, 7], dtype=torch.int16).view(torch.uint16)},
               {"name": "n", "shape": [], "dtype": "int64", "encoding": "dense", "data": torch.tensor(17)}]
    torch.save({"format": "ltp-sparse", "version": 1, "tensors": tensors}, tmp_path / "v1.ltps")
    back = load_sparse(tmp_path / "v1.ltps")
    assert torch.equal(back["w"], w) and torch.equal(back["u"].view(torch.int16), u.view(torch.int16))
    assert back["u"].dtype == torch.uint16 and torch.equal(back["n"], torch.tensor(17))
    # a sparse encoding of a dtype that is only ever stored dense is a damaged file
    tensors[2] = {"name": "b", "shape": [3], "dtype": "bool", "encoding": "indices",
                  "indices": torch.tensor([1], dtype=torch.int32), "values": torch.tensor([True])}
    torch.save({"format": "ltp-sparse", "version": 1, "tensors": tensors}, tmp_path / "bad.ltps")
    with pytest.raises(SparseFormatError, match="tensor 'b': its dtype torch.bool is stored dense, not as indices"):
        load_sparse(tmp_path / "bad.ltps")


def test_file_size_follows_the_nonzero_count(tmp_path):
    sizes = {}
    for sparsity in (0.0, 0.5, 0.9, 0.99):
        model = mlp(hidden=(512, 256))
        ltp = _pruned(model, sparsity) if sparsity else None
        state = plain_state_dict(ltp if ltp else model)
        dense = _dense_size(state, tmp_path / "dense.pt")
        sparse = os.path.getsize(save_sparse(state, tmp_path / "s.ltps"))
        sizes[sparsity] = sparse / dense
        density = 1 - sparsity
        # bitmask (1/32 of float32) + values, or indices + values when that is smaller
        assert sparse / dense <= min(1.0, min(density + 1 / 32, 2 * density)) + 0.02, (sparsity, sparse / dense)
    assert sizes[0.0] <= 1.01  # dense tensors cost nothing extra
    assert sizes[0.9] < 0.25  # a quarter of the dense file at 90% sparsity
    assert sizes[0.99] < sizes[0.9] < sizes[0.5] < sizes[0.0]
    rows = {r["name"]: r for r in sparse_summary(tmp_path / "s.ltps")}
    assert rows["0.weight"]["encoding"] == "indices" and rows["0.bias"]["encoding"] == "dense"


def test_encoding_is_the_smallest(tmp_path):
    g = torch.Generator().manual_seed(0)
    half = torch.randn(4096, generator=g) * (torch.rand(4096, generator=g) < 0.5)
    tenth = torch.randn(4096, generator=g) * (torch.rand(4096, generator=g) < 0.1)
    rare = torch.zeros(4096).index_fill_(0, torch.tensor([1, 100, 4000]), 1.0)
    save_sparse({"half": half, "tenth": tenth, "rare": rare, "tiny": torch.zeros(4)}, tmp_path / "e.ltps")
    rows = {r["name"]: r for r in sparse_summary(tmp_path / "e.ltps")}
    assert {k: rows[k]["encoding"] for k in rows} == {"half": "bitmask", "tenth": "bitmask", "rare": "indices",
                                                      "tiny": "dense"}
    assert rows["rare"]["stored"] == 3 and rows["rare"]["bytes"] == 3 * 8


def test_clear_errors_for_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_sparse(tmp_path / "missing.ltps")
    junk = tmp_path / "junk.ltps"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(SparseFormatError, match="is not a valid ltp-sparse file: it is not a complete torch.save"):
        load_sparse(junk)
    good = save_sparse(_pruned(mlp(hidden=(64,)), 0.9), tmp_path / "good.ltps")
    truncated = tmp_path / "truncated.ltps"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for read in (load_sparse, sparse_summary):
        with pytest.raises(SparseFormatError, match="not a complete torch.save archive"):
            read(truncated)
        with pytest.raises(FileNotFoundError, match="no such file"):
            read(tmp_path / "missing.ltps")
    # Bytes changed in the middle: torch.load would read other numbers; the checksums catch it.
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    (tmp_path / "damaged.ltps").write_bytes(bytes(data))
    with pytest.raises(SparseFormatError, match=r"is damaged \(checksum mismatch\)"):
        load_sparse(tmp_path / "damaged.ltps")
    plain = tmp_path / "plain.pt"
    torch.save(mlp(hidden=(8,)).state_dict(), plain)
    with pytest.raises(SparseFormatError, match="plain state_dict"):
        load_sparse(plain)
    pickled = tmp_path / "object.ltps"
    torch.save({"format": "ltp-sparse", "version": 1, "tensors": [nn.Linear(2, 2)]}, pickled)
    with pytest.raises(SparseFormatError, match="weights_only"):
        load_sparse(pickled)  # arbitrary objects are never unpickled
    newer = tmp_path / "newer.ltps"
    torch.save({"format": "ltp-sparse", "version": 99, "tensors": []}, newer)
    with pytest.raises(SparseFormatError, match="version 99"):
        load_sparse(newer)
    for version in (True, -1):
        torch.save({"format": "ltp-sparse", "version": version, "tensors": []}, newer)
        with pytest.raises(SparseFormatError, match="is not a positive integer"):
            load_sparse(newer)

    payload = torch.load(good, weights_only=True)

    def tampered(change, name):
        p = copy.deepcopy(payload)
        change(next(e for e in p["tensors"] if e["encoding"] == "bitmask"))
        torch.save(p, tmp_path / name)
        return tmp_path / name

    with pytest.raises(SparseFormatError, match=r"tensor '0.weight': the bitmask marks \d+ elements, the file has"):
        load_sparse(tampered(lambda e: e.update(values=e["values"][:-1]), "short.ltps"))
    with pytest.raises(SparseFormatError, match="unknown dtype 'evil'"):
        load_sparse(tampered(lambda e: e.update(dtype="evil"), "dtype.ltps"))
    with pytest.raises(SparseFormatError, match="unknown encoding 'zip'"):
        load_sparse(tampered(lambda e: e.update(encoding="zip"), "encoding.ltps"))
    with pytest.raises(SparseFormatError, match="does not cover"):
        load_sparse(tampered(lambda e: e.update(shape=[3, 3]), "shape.ltps"))
    huge = {"name": "w", "encoding": "indices", "shape": [10**8, 10**8], "dtype": "float32",
            "values": torch.ones(1), "indices": torch.zeros(1, dtype=torch.int64)}
    torch.save({"format": "ltp-sparse", "version": 1, "tensors": [huge]}, tmp_path / "huge.ltps")
    with pytest.raises(SparseFormatError, match="cannot be allocated"):
        load_sparse(tmp_path / "huge.ltps")


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = save_sparse(_pruned(mlp(hidden=(16,)), 0.5), tmp_path / "keep.ltps")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_sparse(_pruned(mlp(hidden=(16,)), 0.9), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.ltps"]  # no temporary file left


# -- ONNX ------------------------------------------------------------------------------------

def test_onnx_without_the_packages_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ex, "onnx_available", lambda: False)
    with pytest.raises(ImportError, match="pip install 'onnx"):
        export_onnx(mlp(hidden=(8,)), torch.randn(1, 64), "unused.onnx")


@needs_onnx
def test_onnx_export_of_the_finalized_model(tmp_path):
    model = small_cnn(channels=(8, 16)).eval()
    ltp = _pruned(model, 0.9)
    with pytest.raises(ValueError, match=r"finalize\(\)"):
        export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "no.onnx")
    ltp.finalize()
    path = export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "net.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]
    x = torch.randn(5, 1, 8, 8)  # another batch size than the example: the batch is dynamic
    with torch.no_grad():
        assert torch.allclose(onnx_forward(path, x), model(x), atol=1e-5)
    assert model.training is False


# -- sparse inference ------------------------------------------------------------------------

def test_csr_linear_layers_give_the_same_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32, bias=False), nn.ReLU(), nn.Linear(32, 4))
    ltp = _pruned(model, 0.9)
    ltp.finalize()
    with torch.no_grad():
        model[4].weight.fill_(1.0)  # a dense layer: stays an nn.Linear
    sparse = to_sparse_inference(model, min_sparsity=0.8)
    assert [type(m).__name__ for m in sparse] == ["SparseLinear", "ReLU", "SparseLinear", "ReLU", "Linear"]
    assert all(type(m) is not SparseLinear for m in model)  # the original is untouched
    assert sparse[0].density == pytest.approx(0.1, abs=0.01)
    x = torch.randn(3, 5, 64)  # any leading dimensions, like nn.Linear
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-5)
    stats = compare_inference(model, sparse, x.view(-1, 64), repeats=3, warmup=1)
    assert set(stats) == {"dense_s", "sparse_s", "speedup", "max_abs_diff"} and stats["max_abs_diff"] < 1e-5
    assert to_sparse_inference(model, inplace=True) is model and type(model[0]) is SparseLinear


def test_sparse_inference_state_dict_saves_and_loads(tmp_path):
    def net(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32, bias=False), nn.ReLU(),
                             nn.Linear(32, 4))

    model = net(0)
    _pruned(model, 0.9).finalize()
    sparse = to_sparse_inference(model, min_sparsity=0.0)  # every Linear a SparseLinear, bias or not
    state = sparse.state_dict()
    # nn.Linear's keys in its order, and the plain model's tensors (dense, same shapes)
    assert list(state) == list(net(1).state_dict())
    _assert_equal_states(state, {k: model.state_dict()[k] for k in state})
    torch.save(state, tmp_path / "sparse.pt")
    loaded = torch.load(tmp_path / "sparse.pt", weights_only=True)
    x = torch.randn(7, 64)
    # into a fresh model converted the same way: CSR rebuilt from the loaded weights
    fresh = to_sparse_inference(net(1), min_sparsity=0.0)
    assert fresh[0].density > 0.9
    fresh.load_state_dict(loaded)
    assert fresh[0].density == sparse[0].density and fresh[0].weight.layout == torch.sparse_csr
    with torch.no_grad():
        assert torch.equal(fresh(x), sparse(x))
    # into the plain architecture (strict), converted afterwards: the same layers again
    plain = net(2)
    plain.load_state_dict(loaded)
    again = to_sparse_inference(plain, min_sparsity=0.0)
    with torch.no_grad():
        assert torch.equal(again(x), sparse(x))
    # the compact file takes it too
    _assert_equal_states(load_sparse(save_sparse(sparse, tmp_path / "s.ltps")), state)
    # load_state_dict's usual errors
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"0.weight\""):
        fresh.load_state_dict({k: v for k, v in loaded.items() if k != "0.weight"})
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        fresh.load_state_dict({**loaded, "0.weight": torch.zeros(3, 3)})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"0.extra\""):
        fresh.load_state_dict({**loaded, "0.extra": torch.zeros(1)})


def test_sparse_inference_refuses_bad_input():
    model = mlp(hidden=(8,))
    LTP(model)
    with pytest.raises(ValueError, match=r"finalize\(\)"):
        to_sparse_inference(model)
    with pytest.raises(ValueError, match="min_sparsity"):
        to_sparse_inference(mlp(hidden=(8,)), min_sparsity=2)
    with pytest.raises(ValueError, match="repeats"):
        compare_inference(mlp(hidden=(8,)), mlp(hidden=(8,)), torch.randn(1, 64), repeats=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sparse_file_and_inference_from_a_gpu_model(tmp_path):
    model = mlp(hidden=(256,)).cuda()
    ltp = _pruned(model, 0.9)
    ltp.finalize()
    back = load_sparse(save_sparse(model, tmp_path / "gpu.ltps"))
    _assert_equal_states(back, {k: v.cpu() for k, v in model.state_dict().items()})
    sparse = to_sparse_inference(model)
    x = torch.randn(8, 64, device="cuda")
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-4)
