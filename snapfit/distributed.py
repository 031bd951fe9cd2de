"""Multi-process data parallel training on torch.distributed (``torchrun --nproc_per_node=N script.py``).

The same user code runs in every process. When torchrun's environment is present (WORLD_SIZE > 1) the
Learner initialises the process group (nccl on CUDA, gloo on CPU), uses ``cuda:LOCAL_RANK``, gives its
training loader a `DistributedEpochSampler` and its validation/test loaders a shard each, and installs
`DistributedTraining`, which wraps the model in DistributedDataParallel for each fit. Every global batch
of N ranks is the batch a single process would draw with batch size ``N * bs`` (same seed, same epoch),
split among the ranks, so a DDP fit follows the single-process one. Only rank 0 writes files, prints and
draws bars; the validation sums are all-reduced so every rank reports the global metrics."""
from __future__ import annotations

import atexit
import copy
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .checks import check_bool
from .core import Callback
from .data.core import EpochShuffleSampler
from .optim import needs_closure
from .sync_batchnorm import sync_bn_callbacks

__all__ = ["default_device", "prepare", "torchrun_env", "init_distributed", "is_distributed", "is_main_process",
           "all_reduce_sum", "barrier", "rank", "world_size", "all_gather_object", "DistributedEpochSampler",
           "ShardSampler", "with_sampler", "distribute_data", "DistributedTraining"]


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare(device: Union[str, torch.device, None], data, model: Optional[torch.nn.Module] = None,
            sync_bn: bool = False) -> Tuple[torch.device, Any, List[Callback]]:
    """A learner's device, data and extra callbacks. Alone: `device` (default: CUDA when available), `data`
    as given. Under torchrun: ``cuda:LOCAL_RANK`` (or the CPU), the process group initialised, the data
    sharded across the ranks, `DistributedTraining`, and with `sync_bn` `SyncBatchNorm` for `model`."""
    env = torchrun_env()
    if env is not None and device is None:
        device = f"cuda:{env['local_rank']}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device) if device is not None else default_device()
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' (or a torch.device), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; pass device='cpu' or leave it None")
    check_bool("sync_bn", sync_bn)
    if env is None:
        return dev, data, sync_bn_callbacks(sync_bn, False, model)
    init_distributed(dev.type == "cuda")
    ddp = DistributedTraining(device_ids=[dev.index] if dev.type == "cuda" else None)
    return dev, distribute_data(data, env["rank"], env["world_size"]), [*sync_bn_callbacks(sync_bn, True, model), ddp]


def torchrun_env() -> Optional[Dict[str, int]]:
    """``{'rank', 'world_size', 'local_rank'}`` when launched by torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1:
        return None
    return {"rank": int(os.environ.get("RANK", "0")), "world_size": world,
            "local_rank": int(os.environ.get("LOCAL_RANK", "0"))}


def init_distributed(use_cuda: bool) -> Dict[str, int]:
    """Initialise the default process group from torchrun's environment (once), select this process's
    GPU, and return the environment."""
    env = torchrun_env()
    if env is None:
        raise RuntimeError("not launched by torchrun with WORLD_SIZE > 1")
    if use_cuda:
        torch.cuda.set_device(env["local_rank"])
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend=backend)
        else:
            # torchrun's agent keeps one store across restarts: the ranks of a restarted attempt would read the
            # addresses the dead attempt published there and fail to connect ("Gloo connectFullMesh failed ...
            # Connection refused"). Each attempt gets its own namespace in the store.
            store, rank_, world = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"snapfit/attempt_{attempt}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank_, world_size=world)
        atexit.register(_destroy)
    return env


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a torch.distributed job of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """False on every rank but 0 of a torch.distributed job: only the main process writes files and prints."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def rank() -> int:
    """This process's rank in a torch.distributed job (0 otherwise)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes of a torch.distributed job (1 otherwise)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank of a torch.distributed job (``[obj]`` otherwise).
    Every rank must call it at the same point."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the processes of a torch.distributed job, in place (identity otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    """Wait for every process of a torch.distributed job (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class DistributedEpochSampler(DistributedSampler):
    """This rank's part of `EpochShuffleSampler`'s order: for each global batch of ``batch_size *
    world`` indices, the rank's consecutive slice of ``batch_size``. The order is padded by wrapping
    around so every rank gets as many samples; `set_epoch(epoch, start)` skips `start` local samples."""

    def __init__(self, n: int, batch_size: int, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True):
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.n, self.batch_size, self.start = n, batch_size, 0
        self.global_order = EpochShuffleSampler(n, seed, shuffle)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the order of `epoch`, skipping this rank's first `start` samples."""
        super().set_epoch(epoch)
        self.start = int(start)

    def order(self, epoch: Optional[int] = None) -> torch.Tensor:
        """This rank's full index order of `epoch`."""
        perm = self.global_order.order(self.epoch if epoch is None else epoch)
        w = self.num_replicas
        pad = (-len(perm)) % w
        if pad:
            perm = torch.cat([perm, perm[:pad]])
        big = self.batch_size * w
        parts = []
        for k in range(0, len(perm), big):
            chunk = perm[k:k + big]
            per = len(chunk) // w
            parts.append(chunk[self.rank * per:(self.rank + 1) * per])
        return torch.cat(parts) if parts else perm[:0]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:].tolist())

    def __len__(self) -> int:
        return max(math.ceil(self.n / self.num_replicas) - self.start, 0)


class ShardSampler(Sampler):
    """A contiguous shard of ``range(n)`` for this rank, without padding (for evaluation)."""

    def __init__(self, n: int, num_replicas: int, rank: int):
        per = math.ceil(n / num_replicas)
        self.indices = list(range(rank * per, min(n, (rank + 1) * per)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def with_sampler(dl: DataLoader, sampler: Sampler) -> DataLoader:
    """A copy of DataLoader `dl` (same dataset, batch size, collate, workers...) drawing from `sampler`."""
    if dl.batch_size is None:
        raise ValueError("a DataLoader with a custom batch_sampler cannot be sharded across processes; "
                         "pass batch_size= and a sampler instead")
    kw = dict(batch_size=dl.batch_size, sampler=sampler, num_workers=dl.num_workers, collate_fn=dl.collate_fn,
              pin_memory=dl.pin_memory, drop_last=dl.drop_last, timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
              generator=dl.generator, persistent_workers=dl.persistent_workers)
    if dl.num_workers > 0:
        kw.update(multiprocessing_context=dl.multiprocessing_context, prefetch_factor=dl.prefetch_factor)
    return DataLoader(dl.dataset, **kw)


def distribute_data(data, rank_: int, world: int):
    """A shallow copy of `data` whose training loader draws this rank's part of each global batch and whose
    validation and test loaders hold this rank's shard."""
    out = copy.copy(data)
    trn = data.train_dl
    if isinstance(trn, DataLoader):
        sampler = trn.sampler
        seed = getattr(sampler, "seed", 0)
        shuffle = getattr(sampler, "shuffle", True) if isinstance(sampler, EpochShuffleSampler) else \
            not isinstance(sampler, torch.utils.data.SequentialSampler)
        out.train_dl = with_sampler(trn, DistributedEpochSampler(len(trn.dataset), trn.batch_size, world, rank_,
                                                                 seed=seed, shuffle=shuffle))
    for name in ("valid_dl", "test_dl"):
        dl = getattr(data, name, None)
        if isinstance(dl, DataLoader):
            setattr(out, name, with_sampler(dl, ShardSampler(len(dl.dataset), world, rank_)))
    return out


class DistributedTraining(Callback):
    """Wraps the model in DistributedDataParallel for the training phase of each fit (created at the
    start of the fit, so parameters frozen since the last fit are left out of gradient syncing) and
    validates with the plain module. Installed by the Learner under torchrun."""

    order = -900

    def __init__(self, device_ids=None, **ddp_kwargs):
        self.device_ids, self.ddp_kwargs = device_ids, ddp_kwargs
        self._plain = self._ddp = None

    def before_fit(self, learn) -> None:
        if needs_closure(learn.opt):
            raise ValueError("optimizers that need a closure (LBFGS) are not supported under torchrun: their "
                             "line searches would take different numbers of steps on different ranks")
        from torch.nn.parallel import DistributedDataParallel as DDP

        self._plain = learn.model
        self._ddp = DDP(self._plain, device_ids=self.device_ids, **self.ddp_kwargs)
        learn.model = self._ddp

    def before_validate(self, learn) -> None:
        if self._plain is not None:
            learn.model = self._plain

    def after_validate(self, learn) -> None:
        if self._ddp is not None:
            learn.model = self._ddp

    def cleanup_fit(self, learn) -> None:
        if self._plain is not None:
            learn.model = self._plain
        self._plain = self._ddp = None
