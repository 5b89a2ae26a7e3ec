"""The processes of an `ltp-train` run: devices, the torchrun process group, agreement on
errors, and each process's seeds and RNG state.

One process (`python -m ltp_core.engine.train`) or several (`torchrun --nproc-per-node N ...`, which
sets WORLD_SIZE / RANK / LOCAL_RANK): on CUDA each process drives GPU LOCAL_RANK over NCCL, on a
CPU the processes talk over gloo.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .config import TrainConfig, UsageError

__all__ = ["Procs", "PeerFailed", "init_processes", "agree", "all_reduce", "seed_all", "rng_state",
           "set_rng_state"]


class PeerFailed(RuntimeError):
    """Another process failed during setup; its message is carried here."""


@dataclass
class Procs:
    """This process's place in the run: its rank among `world` processes, its rank on this
    machine, its device, and whether it created the process group (and so must destroy it)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _resolve_device(name: str, local_rank: int, world: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    count = torch.cuda.device_count()
    index = local_rank if (world > 1 or name == "cuda") else int(name.split(":")[1])
    if index >= count:
        raise UsageError(f"--device {name}: needs GPU {index} but this machine has {count} "
                         f"(run at most {count} processes per node)")
    return torch.device("cuda", index)


def init_processes(cfg: TrainConfig) -> Procs:
    """Read torchrun's environment, pick this process's device (`cfg.device`: auto, cpu, cuda
    or cuda:N) and, with more than one process, join the process group (nccl on CUDA, gloo on
    a CPU). A device that does not exist is a UsageError."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(cfg.device, local_rank, world)
    procs = Procs(rank, world, local_rank, device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        procs.owns_group = True
    return procs


def agree(procs: Procs, error: BaseException | None) -> None:
    """Every process learns whether any failed (so none waits forever in a collective);
    this process's own error is re-raised, else the first peer's message as PeerFailed."""
    if procs.distributed:
        messages: list[Any] = [None] * procs.world
        dist.all_gather_object(messages, None if error is None else f"{error}")
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed and error is None:
            raise PeerFailed(f"process {failed[0][0]} failed: {failed[0][1]}")
    if error is not None:
        raise error


def all_reduce(t: Tensor, procs: Procs, op=None) -> Tensor:
    """`t` reduced in place over all processes (a sum unless `op` says otherwise); returns it."""
    if procs.distributed:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


# -- seeds and RNG state (checkpointed per process) ----------------------------------------

def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (every device's) generators with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generator states as tensors and plain values, so a checkpoint holding
    them loads with weights_only=True; `set_rng_state` restores them."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [int(v) for v in random.getstate()[1]],
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the generator states `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
