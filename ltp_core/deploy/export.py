"""Deploying a pruned network: a plain state_dict, a compact sparse file, ONNX, sparse inference.

    model = ltp.finalize()                          # plain architecture, pruned weights exactly 0
    save_sparse(model, "net.ltps")                  # size follows the number of nonzeros
    state = load_sparse("net.ltps")                 # the exact state_dict back
    plain_model.load_state_dict(state)              # strict: the torchvision/timm/ltp_core class
    export_onnx(model, example_input, "net.onnx")   # needs the onnx + onnxscript packages
    fast = to_sparse_inference(model)               # Linear layers with CSR weights (inference)

The sparse file (`save_sparse`, `load_sparse`, `sparse_summary`) is `ltp_core.sparse_file`'s,
named here too; this module adds ONNX export and sparse inference.

Sparse inference: torch has no sparse convolution, but its CSR matrix product (MKL on x86
CPUs, cuSPARSE on GPUs) can beat a dense Linear when the weight is large and very sparse;
whether it does depends on the layer, its sparsity, the batch size and the machine.
`compare_inference` measures it for your model, and notebook 08 sweeps sparsity and batch
size on one layer; do not assume.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..io import publish, write_target
from .sparse_file import (
    SPARSE_FORMAT,
    SPARSE_VERSION,
    SparseFormatError,
    load_sparse,
    plain_state_dict,
    save_sparse,
    sparse_summary,
)

__all__ = ["SPARSE_FORMAT", "SPARSE_VERSION", "SparseFormatError", "plain_state_dict", "save_sparse", "load_sparse",
           "sparse_summary", "onnx_available", "ONNX_INSTALL_HINT", "export_onnx", "onnx_forward", "SparseLinear",
           "to_sparse_inference", "compare_inference"]


# -- ONNX ------------------------------------------------------------------------------------

ONNX_INSTALL_HINT = "pip install 'onnx>=1.23' 'onnxscript>=0.7'"


def onnx_available() -> bool:
    """Whether `export_onnx` can run: torch's exporter needs the onnx and onnxscript packages."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def _refuse_parametrized(model: nn.Module, what: str) -> None:
    bad = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if bad:
        raise ValueError(f"{what} needs a plain model, but {bad[:3]} still carry parametrizations "
                         "(LTP's masks): call ltp.finalize() first")


def export_onnx(model: nn.Module, example_input: Tensor, path: str | os.PathLike, *, opset_version: int | None = None,
                dynamic_batch: bool = True, input_name: str = "input", output_name: str = "output",
                check: bool = True) -> Path:
    """Export a plain (finalized) model to one ONNX file with torch's exporter
    (`torch.onnx.export(..., dynamo=True)`), in eval mode, weights inside the file.

    `example_input` fixes every dimension but the first (the batch, kept dynamic unless
    `dynamic_batch=False`). The file is written next to `path` and renamed into place after
    `onnx.checker` accepted it (`check=True`). ONNX stores the pruned weights densely:
    the format has no sparse initializers that runtimes use, so the file is as large as
    the dense model's. Raises ImportError (with the pip command) when onnx or onnxscript is
    missing, and ValueError for a model that still carries LTP's parametrizations.
    """
    if not onnx_available():
        raise ImportError(f"ONNX export needs the onnx and onnxscript packages: {ONNX_INSTALL_HINT}")
    _refuse_parametrized(model, "export_onnx")
    import onnx

    path = write_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.onnx")
    os.close(fd)
    was_training = model.training
    model.eval()
    try:
        dynamic = ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None
        torch.onnx.export(model, (example_input,), tmp, dynamo=True, external_data=False, dynamic_shapes=dynamic,
                          input_names=[input_name], output_names=[output_name], opset_version=opset_version,
                          verbose=False)
        if check:
            onnx.checker.check_model(tmp, full_check=True)
        publish(tmp, path)
    finally:
        model.train(was_training)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path


def onnx_forward(path: str | os.PathLike, x: Tensor) -> Tensor:
    """Run an exported ONNX file on `x` (onnxruntime when installed, else onnx's reference
    evaluator, slow but exact enough for checks) and return the first output as a tensor."""
    import numpy as np

    array = x.detach().cpu().numpy()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: array})[0]
    else:
        import onnx
        from onnx.reference import ReferenceEvaluator

        proto = onnx.load(str(path))
        out = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: array})[0]
    return torch.from_numpy(np.ascontiguousarray(out))


# -- sparse inference ------------------------------------------------------------------------

def _to_csr(weight: Tensor) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return weight.detach().to_sparse_csr()


class SparseLinear(nn.Module):
    """Inference-only stand-in for an `nn.Linear` whose weight is stored as a sparse CSR
    matrix: y = x W^T + b computed as (W x^T)^T with torch's sparse-dense product (addmm).
    The same function as the Linear it replaces, up to float summation order.

    Its state_dict is the Linear's: `weight` dense (out_features, in_features), `bias`
    (out_features,). So it saves and loads like the plain model (`torch.load(weights_only=True)`
    reads it, a plain model loads it strictly), and loading converts the weight to CSR again,
    whatever the nonzeros of the weight it replaces."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # not persistent: _save_to_state_dict / _load_from_state_dict carry it densely, since
        # copy_ into a CSR tensor needs the same nonzero count and a plain Linear needs it dense
        self.register_buffer("weight", _to_csr(linear.weight), persistent=False)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).t()
        y = torch.addmm(self.bias.unsqueeze(1), self.weight, rows) if self.bias is not None else self.weight @ rows
        return y.t().reshape(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight.to_dense()  # first, in nn.Linear's key order
        super()._save_to_state_dict(destination, prefix, keep_vars)  # the bias

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)  # the bias; it counts the weight as unexpected
        key = prefix + "weight"
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        weight, shape = state_dict[key], (self.out_features, self.in_features)
        if not torch.is_tensor(weight) or tuple(weight.shape) != shape:
            got = tuple(weight.shape) if torch.is_tensor(weight) else type(weight).__name__
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {got} from checkpoint, "
                              f"the shape in current model is {shape}.")
            return
        weight = weight.detach().to_dense() if weight.layout != torch.strided else weight.detach()
        self.weight = _to_csr(weight.to(device=self.weight.device, dtype=self.weight.dtype))

    @property
    def density(self) -> float:
        return self.weight.values().numel() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.3f}"


def to_sparse_inference(model: nn.Module, min_sparsity: float = 0.9, *, inplace: bool = False) -> nn.Module:
    """A copy of the plain `model` (or `model` itself with `inplace=True`) in which every
    float32/float64 `nn.Linear` with at least `min_sparsity` of its weights exactly zero is a
    `SparseLinear` (CSR). Convolutions stay dense: torch has no sparse convolution kernel.
    For inference only (no gradients). Its state_dict is the plain model's (dense weights): save
    it with torch.save or `save_sparse`, and load it into the plain model (then convert), or
    into one converted alike (see `SparseLinear`). Whether it is faster depends on size,
    sparsity and batch: measure it with `compare_inference`."""
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be a fraction in [0, 1], got {min_sparsity!r}")
    _refuse_parametrized(model, "to_sparse_inference")
    import copy

    out = model if inplace else copy.deepcopy(model)
    targets = [(name, m) for name, m in out.named_modules()
               if type(m) is nn.Linear and m.weight.dtype in (torch.float32, torch.float64)
               and float((m.weight == 0).float().mean()) >= min_sparsity]
    if any(not name for name, _ in targets):
        raise ValueError("to_sparse_inference converts the Linear layers inside a model, not a bare Linear; "
                         "wrap it: nn.Sequential(linear)")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, child, SparseLinear(linear))
    return out


@torch.no_grad()
def compare_inference(dense: nn.Module, sparse: nn.Module, x: Tensor, *, repeats: int = 30,
                      warmup: int = 3) -> dict[str, float]:
    """Time `dense(x)` and `sparse(x)` alternately (so machine noise hits both alike), in eval
    mode; returns the medians in seconds, the speedup (dense / sparse, > 1: sparse faster)
    and the largest absolute difference of their outputs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    modes = [dense.training, sparse.training]
    dense.eval(), sparse.eval()
    try:
        a, b = dense(x), sparse(x)
        for _ in range(warmup):
            dense(x), sparse(x)
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        for _ in range(repeats):
            for key, model in (("dense", dense), ("sparse", sparse)):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                times[key].append(time.perf_counter() - start)
    finally:
        dense.train(modes[0]), sparse.train(modes[1])
    d, s = statistics.median(times["dense"]), statistics.median(times["sparse"])
    return {"dense_s": d, "sparse_s": s, "speedup": d / s if s > 0 else math.inf,
            "max_abs_diff": float((a.float() - b.float()).abs().max()) if a.numel() else 0.0}
