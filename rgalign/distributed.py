"""Data-parallel ranks, kept apart from the models: what a trainer needs to know about the process group.

Nothing here starts processes; the standard launcher does (one process per rank, ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` in the environment)::

    torchrun --nproc_per_node 2 -m rgalign.cli step train-ranker --config cfg.json --world W --reasoner R --out O

On a cluster the same command is the ``TrainJob``'s (``pipelines/trainjob.py``). Gloo on CPU, NCCL on GPU.

How a ranker's global batch is split (``RankerTrainer``): every rank draws the same permutation and the same
negatives for the global batch of ``batch_size`` sessions (one seed), then trains on its own contiguous part
(``part``). The loss of a part is scaled by ``n_part * world / n_global``, so DDP's mean of the ranks' gradients is
the gradient of the global batch's mean loss, as in one process; the confidence weights (Eq. 5), normalised over a
batch, are normalised over the global one (``gather``). Dropout masks differ from a one-process run (each rank
draws its own).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the group. ``DistEnv()`` is one process (every method a no-op)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} of world size {self.world}: need 0 <= rank < world, world >= 1 "
                             f"(check RANK / WORLD_SIZE set by the launcher)")

    @classmethod
    def from_env(cls) -> "DistEnv":
        """The launcher's environment (torchrun, the DeepSpeed launcher, a Kubeflow Trainer node); one process
        when ``WORLD_SIZE`` is unset."""
        try:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError as e:
            raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, saves and registers."""
        return self.rank == 0

    def init(self) -> "DistEnv":
        """Join the process group (once per process)."""
        import torch.distributed as dist
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                    rank=self.rank, world_size=self.world)
        return self

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sizes(self, n: int) -> list[int]:
        """Rows of each rank's part of a global batch of ``n`` (contiguous, sizes differ by at most one)."""
        return [n // self.world + (r < n % self.world) for r in range(self.world)]

    def part(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n``."""
        sizes = self.sizes(n)
        start = sum(sizes[:self.rank])
        return slice(start, start + sizes[self.rank])

    def loss_scale(self, n: int) -> float:
        """Factor on a part's mean loss that makes the ranks' mean gradient the global batch's."""
        return self.sizes(n)[self.rank] * self.world / n if self.enabled else 1.0

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks (a copy on every rank)."""
        if not self.enabled:
            return x
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x / self.world

    def gather(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(n, ...) the parts of every rank concatenated in rank order, with gradients flowing back to each
        rank's own part; ``x`` is this rank's part of a global batch of ``n``."""
        if not self.enabled:
            return x
        from torch.distributed.nn.functional import all_gather
        sizes, top = self.sizes(n), max(self.sizes(n))
        padded = torch.cat([x, x.new_zeros((top - len(x), *x.shape[1:]))]) if len(x) < top else x
        return torch.cat([p[:s] for p, s in zip(all_gather(padded), sizes)])

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP around ``module`` when there are several ranks (gradients averaged in backward)."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
