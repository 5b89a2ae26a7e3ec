"""The ltp-sparse file: a pruned network's state_dict in a size that follows its nonzeros.

    save_sparse(model, "net.ltps")                  # a finalized model, an LTP object or a state_dict
    state = load_sparse("net.ltps")                 # the exact state_dict back
    plain_model.load_state_dict(state)              # strict: the torchvision/timm/ltp_core class

The file is written with `torch.save` and holds only plain containers (a dict, a list,
str, int) and tensors, so `torch.load(path, weights_only=True)` reads it and nothing is
unpickled but data. It takes every dtype `torch.save` does (floats and float8, signed and
unsigned integers, bool, complex, quantized, raw bits); `save_sparse` refuses the others
(torch's sub-byte int1..int7 / uint1..uint7) before it writes anything. Each tensor is stored
in whichever encoding is smallest:

- `dense`: the tensor as is (biases, batch-norm statistics, integer buffers, dense layers;
  always for bool, complex, quantized and sparse-layout tensors);
- `bitmask`: one bit per element (set = stored) plus the stored values, n/8 + nnz * itemsize
  bytes: at 90% sparsity a float32 weight takes 13% of its dense size;
- `indices`: the flat positions (int32, or int64 past 2**31 elements) plus the values,
  nnz * (4 + itemsize) bytes: smaller than the bitmask above ~97% sparsity (float32).

The two sparse encodings leave out the elements whose bits are all zero, and -0.0. They work on
each element's bits (through a same-width signed integer view), so that uint16/32/64, float8 and
raw-bits dtypes, whose values torch cannot compare or scatter, round-trip too.

`load_sparse` returns tensors equal to the saved ones bit for bit, in the saved key order, on the
CPU, contiguous (COO/CSR tensors in their layout). The one bit it does not keep is the sign of a
zero: a hard-pruned weight w * 0 is -0.0 for negative w, and comes back as +0.0 (equal under ==,
and it makes no difference to any output but the sign of an exactly zero one).
"""
from __future__ import annotations

import functools
import io
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import atomic_save

__all__ = ["SPARSE_FORMAT", "SPARSE_VERSION", "SparseFormatError", "plain_state_dict", "save_sparse", "load_sparse",
           "sparse_summary"]

SPARSE_FORMAT = "ltp-sparse"
SPARSE_VERSION = 1
ENCODINGS = ("dense", "bitmask", "indices")
# torch.save puts every tensor's storage in its own record of the zip archive (name, header,
# 64-byte alignment); an extra tensor is worth encoding only if it saves more than this.
_RECORD_OVERHEAD = 256
# Same-width signed integers by element size (bytes). The sparse encodings read, compare and
# scatter each element's bits through such a view: torch implements those ops for every signed
# integer dtype, but not for uint16/32/64 (index_put, and on older torch comparisons and
# nonzero), float8_e8m0fnu or bits8, and a bit pattern round-trips exactly where a value may not.
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_QUANTIZED = {getattr(torch, n) for n in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4") if hasattr(torch, n)}


class SparseFormatError(ValueError):
    """The file is not an ltp-sparse file, is damaged, or was written by a newer version."""


# -- a plain state_dict ----------------------------------------------------------------------

def plain_state_dict(source: Any) -> dict[str, Tensor]:
    """The deployable state_dict of `source`, detached, on the CPU, in the source's key order.

    `source` is a plain (e.g. finalized) `nn.Module`, a pruning method with
    `hard_state_dict()` (LTP and the baselines: the hard-pruned weights, without changing the
    model), or a state_dict mapping. A model that still carries LTP's parametrizations is
    refused: its keys (`...parametrizations.weight.original`) do not load into the plain
    architecture; finalize it or pass the LTP object instead.
    """
    if hasattr(source, "hard_state_dict") and not isinstance(source, nn.Module):
        if getattr(source, "finalized", False):
            source = source.model
        else:
            source = source.hard_state_dict()
    if isinstance(source, nn.Module):
        source = source.state_dict()
    if not isinstance(source, Mapping):
        raise TypeError(f"expected an nn.Module, a pruning method or a state_dict, got {type(source).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in source.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise TypeError(f"a state_dict maps names to tensors; {key!r} holds {type(value).__name__}")
        if ".parametrizations." in f".{key}":
            raise ValueError(f"{key!r} belongs to a parametrized (unfinalized) model; call ltp.finalize() first, "
                             "or pass the LTP object (its hard_state_dict() is the plain, hard-pruned one)")
        out[key] = value.detach().cpu()
    return out


# -- the sparse file -------------------------------------------------------------------------

def _pack_bits(mask: Tensor) -> Tensor:
    """bool (n,) -> uint8 (ceil(n / 8),), element i in bit i % 8 of byte i // 8."""
    pad = (-mask.numel()) % 8
    if pad:
        mask = torch.cat([mask, mask.new_zeros(pad)])
    bits = mask.view(-1, 8).to(torch.int32) << torch.arange(8, dtype=torch.int32)
    return bits.sum(1).to(torch.uint8)


def _unpack_bits(packed: Tensor, n: int) -> Tensor:
    bits = (packed.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.view(-1)[:n].bool()


@functools.cache
def _bit_view(dtype: torch.dtype) -> torch.dtype | None:
    """The signed integer dtype the sparse encodings view `dtype`'s elements as, or None for
    the dtypes that are always stored dense (bool, complex, quantized)."""
    if dtype == torch.bool or dtype.is_complex or dtype in _QUANTIZED:
        return None
    return _BITS.get(dtype.itemsize)


@functools.cache
def _negative_zero(dtype: torch.dtype) -> int | None:
    """-0.0's bits in `dtype` (read as its `_bit_view`), or None where it has none: integers,
    the fnuz and e8m0 float8 formats, float4_e2m1fn_x2 (no conversion kernel; kept bit for bit)."""
    if not dtype.is_floating_point:
        return None
    try:
        bits = int(torch.tensor([-0.0]).to(dtype).view(_BITS[dtype.itemsize]))
    except (RuntimeError, NotImplementedError):
        return None
    return bits or None


@functools.cache
def _storable(dtype: torch.dtype) -> bool:
    """Whether torch.save writes a `dtype` tensor that torch.load(weights_only=True) reads back."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # "ComplexHalf support is experimental" and the like
            warnings.simplefilter("ignore")
            empty = torch.empty(0, dtype=dtype)
        torch.save(empty, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except (KeyError, RuntimeError, NotImplementedError, pickle.UnpicklingError):
        return False  # e.g. KeyError "dtype torch.int4 is not recognized"
    return True


def _storable_dtypes() -> list[str]:
    """The names of the dtypes save_sparse stores, for error messages."""
    dtypes = {d for d in vars(torch).values() if isinstance(d, torch.dtype)}
    return sorted(str(d).removeprefix("torch.") for d in dtypes if d in _QUANTIZED or _storable(d))


def _check_storable(name: str, t: Tensor) -> None:
    # a quantized tensor carries its quantizer: an empty one made from the dtype alone is no test
    if t.dtype not in _QUANTIZED and not _storable(t.dtype):
        raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which torch.save cannot store; save_sparse "
                        f"stores {', '.join(_storable_dtypes())}")


def _copy(t: Tensor) -> Tensor:
    """`t`'s elements in a contiguous tensor of their own (torch.save writes a view's whole storage)."""
    if t.layout != torch.strided:  # COO / CSR: torch.save keeps the layout
        return t.clone()
    if t.is_quantized:  # quint4x2 / quint2x4 have no copy kernel, so no clone of a contiguous one
        return t.contiguous()
    bits = _BITS.get(t.element_size())
    if bits is None:  # complex128
        return t.clone(memory_format=torch.contiguous_format)
    # through the bit view: bits8, float4_e2m1fn_x2 and the like have no copy kernel of their own
    return t.view(bits).clone(memory_format=torch.contiguous_format).view(t.dtype)


def _encode(name: str, tensor: Tensor) -> dict[str, Any]:
    t = tensor.detach().cpu()
    entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    n = t.numel()
    view = None if t.layout != torch.strided else _bit_view(t.dtype)
    if view is None or n == 0:
        return {**entry, "encoding": "dense", "data": _copy(t)}
    flat = t.view(view).reshape(-1)
    keep = flat != 0
    negative_zero = _negative_zero(t.dtype)
    if negative_zero is not None:  # -0.0 is a zero too, left out (it comes back as +0.0)
        keep &= flat != negative_zero
    nnz = int(keep.sum())
    item = t.element_size()
    index_size = 4 if n < 2**31 else 8
    costs = {"dense": n * item,
             "bitmask": math.ceil(n / 8) + nnz * item + _RECORD_OVERHEAD,
             "indices": nnz * (index_size + item) + _RECORD_OVERHEAD}
    encoding = min(ENCODINGS, key=lambda e: (costs[e], ENCODINGS.index(e)))
    if encoding == "dense":
        return {**entry, "encoding": "dense", "data": _copy(t)}
    values = flat[keep].view(t.dtype)
    if encoding == "bitmask":
        return {**entry, "encoding": "bitmask", "mask": _pack_bits(keep), "values": values}
    index_dtype = torch.int32 if index_size == 4 else torch.int64
    return {**entry, "encoding": "indices", "indices": keep.nonzero().view(-1).to(index_dtype), "values": values}


def save_sparse(source: Any, path: str | os.PathLike) -> Path:
    """Write `source`'s deployable state_dict (see `plain_state_dict`) to `path` in the
    ltp-sparse format (see the module docstring), atomically: a temporary file in the same
    folder renamed into place, so an existing file survives a crash. Returns the path.
    Raises TypeError, naming the tensor, for a dtype torch.save cannot store (torch.int4 ...)."""
    state = plain_state_dict(source)
    for name, value in state.items():  # before anything is written: a file that cannot be read back
        _check_storable(name, value)
    payload = {"format": SPARSE_FORMAT, "version": SPARSE_VERSION,
               "tensors": [_encode(name, value) for name, value in state.items()]}
    path = Path(path)
    atomic_save(payload, path)
    return path


def _bad(path: Path, what: str) -> SparseFormatError:
    return SparseFormatError(f"{path} is not a valid {SPARSE_FORMAT} file: {what}")


def _dtype(path: Path, name: str, text: Any) -> torch.dtype:
    dtype = getattr(torch, text, None) if isinstance(text, str) else None
    if not isinstance(dtype, torch.dtype):
        raise _bad(path, f"tensor {name!r} has an unknown dtype {text!r}")
    return dtype


def _decode(path: Path, entry: Any) -> tuple[str, Tensor]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _bad(path, "a tensor entry is not a mapping with a name")
    name, encoding, shape = entry["name"], entry.get("encoding"), entry.get("shape")
    if encoding not in ENCODINGS:
        raise _bad(path, f"tensor {name!r} has an unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise _bad(path, f"tensor {name!r} has a bad shape {shape!r}")
    dtype = _dtype(path, name, entry.get("dtype"))
    n = math.prod(shape)
    if encoding == "dense":
        data = entry.get("data")
        if not torch.is_tensor(data) or data.dtype != dtype or list(data.shape) != shape:
            raise _bad(path, f"tensor {name!r}: its data does not match dtype {dtype} and shape {shape}")
        return name, data
    view = _bit_view(dtype)
    if view is None:
        raise _bad(path, f"tensor {name!r}: its dtype {dtype} is stored dense, not as {encoding}")
    values = entry.get("values")
    if not torch.is_tensor(values) or values.dtype != dtype or values.dim() != 1:
        raise _bad(path, f"tensor {name!r}: its values are not a 1-d {dtype} tensor")
    if encoding == "bitmask":
        mask = entry.get("mask")
        if not torch.is_tensor(mask) or mask.dtype != torch.uint8 or mask.shape != (math.ceil(n / 8),):
            raise _bad(path, f"tensor {name!r}: its bitmask does not cover {n} elements")
        keep = _unpack_bits(mask, n)
        if int(keep.sum()) != values.numel():
            raise _bad(path, f"tensor {name!r}: the bitmask marks {int(keep.sum())} elements, "
                             f"the file has {values.numel()} values")
        flat = torch.zeros(n, dtype=view)
        flat[keep] = values.view(view)
    else:
        index = entry.get("indices")
        if (not torch.is_tensor(index) or index.dtype not in (torch.int32, torch.int64) or index.dim() != 1
                or index.numel() != values.numel()):
            raise _bad(path, f"tensor {name!r}: its indices do not pair with its {values.numel()} values")
        index = index.long()
        increasing = bool((index[1:] > index[:-1]).all())
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n or not increasing):
            raise _bad(path, f"tensor {name!r}: its indices are not increasing positions in [0, {n})")
        try:
            flat = torch.zeros(n, dtype=view)
        except RuntimeError:  # a shape no memory holds: not what save_sparse wrote
            raise _bad(path, f"tensor {name!r}: its shape {shape} ({n} elements) cannot be allocated") from None
        flat[index] = values.view(view)
    # the left-out elements are all-zero bits: +0 in every dtype that has a zero
    return name, flat.view(dtype).view(shape)


def _payload(path: Path) -> dict[str, Any]:
    # The file's checked header: a complete zip (torch.load does not check the CRCs, so a
    # damaged file could load different numbers), an ltp-sparse payload of a known version.
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path} (expected an {SPARSE_FORMAT} file written by save_sparse)")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise _bad(path, f"it is not a complete torch.save archive ({type(e).__name__}: {e})") from None
    if damaged is not None:
        raise _bad(path, f"its entry {damaged} is damaged (checksum mismatch)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, unpickling and storage errors all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _bad(path, f"torch.load(weights_only=True) cannot read it ({type(e).__name__}: {first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != SPARSE_FORMAT:
        kind = f"a {type(payload).__name__}" if not isinstance(payload, dict) else "a mapping without format=ltp-sparse"
        raise _bad(path, f"it holds {kind} (a plain state_dict? load it with torch.load)")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad(path, f"its version {version!r} is not a positive integer")
    if version > SPARSE_VERSION:
        raise SparseFormatError(f"{path} is {SPARSE_FORMAT} version {version!r}; this ltp_core reads versions up to "
                                f"{SPARSE_VERSION} (upgrade ltp_core)")
    if not isinstance(payload.get("tensors"), list):
        raise _bad(path, "it has no tensor list")
    return payload


def _tensors(path: Path, payload: dict[str, Any]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for entry in payload["tensors"]:
        name, tensor = _decode(path, entry)
        if name in out:
            raise _bad(path, f"tensor {name!r} appears twice")
        out[name] = tensor
    return out


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state_dict a `save_sparse` file holds: every tensor equal to the saved one bit for
    bit (but -0.0, which comes back as +0.0), in the saved order, contiguous (COO/CSR tensors
    in their layout), on the CPU (move it with `model.to(...)` after loading). Read with
    `torch.load(weights_only=True)` after the archive's checksums are verified. Raises
    FileNotFoundError for a missing file and SparseFormatError (a ValueError) for anything else
    that is not a complete, undamaged ltp-sparse file."""
    path = Path(path)
    return _tensors(path, _payload(path))


def sparse_summary(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per tensor of an ltp-sparse file: name, shape, encoding, elements, stored
    values, and the bytes of its data (values + mask or indices, or the dense tensor).
    Raises what `load_sparse` raises."""
    path = Path(path)
    payload = _payload(path)
    _tensors(path, payload)  # every entry checked before it is described
    rows = []
    for e in payload["tensors"]:
        parts = [e[k] for k in ("data", "values", "mask", "indices") if k in e]
        stored = e["data"].numel() if e["encoding"] == "dense" else e["values"].numel()
        rows.append({"name": e["name"], "shape": tuple(e["shape"]), "encoding": e["encoding"],
                     "elements": math.prod(e["shape"]), "stored": stored,
                     "bytes": sum(p.numel() * p.element_size() for p in parts)})
    return rows
