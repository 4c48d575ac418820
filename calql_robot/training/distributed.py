"""One learner over several processes (``torchrun --nproc-per-node N -m calql_robot.pretrain ...``).

Each process (rank) draws its own shard of ``batch_size / N`` transitions with its own random streams, computes the
losses on it, and the gradients are averaged over the ranks (an all-reduce of every ``.grad``) between the backward
pass and the optimizer steps. Every loss is a mean over the batch, so the average of the N shard gradients is the
gradient of the whole batch's loss: one update on N ranks x B/N rows equals one update on B rows in one process
(tests/test_distributed.py). All ranks then hold the same networks and optimizer states; rank 0 alone writes (run
directory, logs, evaluation, plots, checkpoints).

Random streams: rank 0 keeps exactly those of a single-process run (seed ``seed``). Every other rank re-derives its
streams (batch sampler, the agent's noise generator, torch / numpy / Python global RNGs for augmentation) from
(seed, rank, update counter) when it starts or resumes, see :func:`rank_streams`. A checkpoint holds rank 0's states,
so a resumed single-process run continues exactly; a resumed run with N > 1 continues rank 0's streams exactly and the
others' from freshly derived ones (a valid continuation, not bit-identical to an uninterrupted run). A checkpoint
written with any N resumes with any other N.

Without torchrun's environment variables (``WORLD_SIZE`` unset or 1) :func:`from_env` gives a single-process context
on which every method is a no-op: the run is exactly the single-process one. CPU ranks use the gloo backend, CUDA
ranks nccl with one device per ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from calql_robot.errors import UserError

# How long a rank waits in a collective for the others: rank 0 evaluates and checkpoints while the others wait in the
# next gradient all-reduce, so this must exceed the longest evaluation (nccl's default is 10 minutes).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Distributed:
    """Where this process stands among the ranks; ``enabled`` is False for a single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    def is_main(self) -> bool:
        """True on the rank that writes files and prints the run's progress (rank 0; always in a single process)."""
        return self.rank == 0

    def shard_size(self, batch_size: int) -> int:
        """Rows each rank samples per update: ``batch_size / world_size``; UserError unless it divides evenly."""
        if batch_size % self.world_size != 0:
            raise UserError(f"pretrain.batch_size={batch_size} does not split evenly over the {self.world_size} "
                            f"torchrun processes; expected a multiple of {self.world_size} (each process samples "
                            "batch_size / nproc-per-node rows)")
        return batch_size // self.world_size

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace every ``param.grad`` by its mean over the ranks (one all-reduce of all gradients, flattened).

        Parameters without a gradient are skipped; which ones have one depends only on the config, the same on
        every rank, so the flattened sizes agree.
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def broadcast_from_main(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite ``tensors`` (in place) on every rank with rank 0's values; a no-op in a single process."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def mean_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The per-rank ``metrics`` averaged over the ranks (all shards are the same size, so batch means of the
        shards average to the batch mean). Collective: every rank calls it at the same update."""
        if not self.enabled or not metrics:
            return dict(metrics)
        names = list(metrics)
        values = torch.tensor([float(metrics[k]) for k in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return dict(zip(names, (values / self.world_size).tolist()))

    def rank_streams(self, seed: int, update: int, generator: torch.Generator) -> np.random.Generator | None:
        """On ranks other than 0: seed the global torch / numpy / Python RNGs and ``generator`` (the agent's noise
        generator) from (seed, rank, update) and return a new numpy Generator for the batch sampler. On rank 0:
        None, and nothing is touched (its streams are the single-process run's, restored from a checkpoint)."""
        if self.is_main():
            return None
        sequence = np.random.SeedSequence([int(seed), self.rank, int(update)])
        torch_seed, generator_seed, numpy_seed = (int(v) for v in sequence.generate_state(3, dtype=np.uint32))
        torch.manual_seed(torch_seed)
        generator.manual_seed(generator_seed)
        np.random.seed(numpy_seed)
        random.seed(numpy_seed)
        return np.random.default_rng(sequence.spawn(1)[0])

    def barrier(self) -> None:
        """Wait until every rank gets here; a no-op in a single process."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (at the end of the run)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected a whole number as torchrun sets it; run "
                        "under `torchrun --nproc-per-node N -m calql_robot.pretrain ...` or unset WORLD_SIZE") from None


def from_env(device: torch.device) -> Distributed:
    """The context of this process from torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``), joining the process group when ``WORLD_SIZE`` > 1; else a single process.

    ``device`` is the run's resolved ``device`` option: CPU ranks use gloo; ``cuda`` (or ``auto`` on a GPU machine)
    becomes ``cuda:LOCAL_RANK`` with nccl. ``cuda:N`` is refused with several ranks (each rank picks its own GPU).
    """
    if os.environ.get("WORLD_SIZE") in (None, "", "1"):
        return Distributed(device=device)
    missing = [name for name in TORCHRUN_VARS if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {missing} are not; start several "
                        "processes with `torchrun --nproc-per-node N -m calql_robot.pretrain ...`, which sets them all")
    rank, local_rank, world_size = _env_int("RANK"), _env_int("LOCAL_RANK"), _env_int("WORLD_SIZE")
    if not 0 <= rank < world_size:
        raise UserError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    backend = "gloo"
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"device={device} with {world_size} torchrun processes: each process uses the GPU of its "
                            "LOCAL_RANK; pass device=cuda or device=auto (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                            "visible; use at most that many processes per node (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    context = Distributed(rank, world_size, local_rank, device, enabled=True)
    if context.is_main():
        print(f"distributed: {world_size} processes ({backend}), each samples batch_size / {world_size} rows; "
              "gradients averaged over them, rank 0 writes")
    return context


def agent_tensors(agent: Any) -> list[torch.Tensor]:
    """Every parameter and buffer of a CalQLAgent's networks (targets and averages included) and its temperature /
    CQL multiplier: what must agree on all ranks before the first update (see ``broadcast_from_main``)."""
    modules = [agent.encoder, agent.actor, agent.critic, agent.critic_target, *agent.policy_ema.values()]
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())]
    return [*tensors, agent.log_alpha, agent.log_alpha_prime]


def check_batch_statistics(cfg: Any, world: Distributed) -> None:
    """Refuse what would make a rank's update depend on its own shard's statistics: plain BatchNorm in the encoder
    (``agent.encoder.resnet_norm=batch``) normalises by each shard's mean and variance, not the batch's."""
    from omegaconf import OmegaConf

    norm = OmegaConf.select(cfg, "agent.encoder.resnet_norm", default=None)
    if world.enabled and str(norm) == "batch":
        raise UserError(f"agent.encoder.resnet_norm=batch with {world.world_size} torchrun processes: BatchNorm would "
                        "normalise each process's shard by its own statistics, so the update would differ from the "
                        "single-process one; use agent.encoder.resnet_norm=group or frozen_batch")
