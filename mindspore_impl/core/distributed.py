"""Many processes under MindSpore's own launcher, msrun: who am I, how many are we, and the gradient mean.

    msrun --worker_num=8 --local_worker_num=8 --master_port=8118 --log_dir=msrun_log --join=True \
        launch.py --config configs/demo-mvdiffusion.yaml --train

msrun (MindSpore's dynamic-cluster launcher, https://www.mindspore.cn/tutorials/en/r2.7.1/parallel/msrun_launcher.html)
starts one scheduler and `worker_num` workers, each running the same script with the dynamic-cluster
environment variables set (MS_ROLE = MS_SCHED or MS_WORKER, MS_WORKER_NUM, MS_SCHED_HOST, MS_SCHED_PORT,
MS_NODE_ID; https://www.mindspore.cn/tutorials/en/r2.7.1/parallel/dynamic_cluster.html). `init()` then calls
`mindspore.communication.init()`, which builds the cluster over hccl (Ascend), nccl (GPU) or mccl (CPU,
TCP on loopback). Without those variables everything here is the single process: rank 0 of 1, no reducer,
no communication, nothing changed.

Two ways launch.py uses the ranks:

- data parallel (`init(data_parallel=True)`): every rank runs the same model on its shard of the global
  batch; `grad_reducer(parameters)` gives the step builder (core/train_step.py) a cell that all-reduces the
  gradients and the loss to their means across ranks inside the compiled step, so every rank applies the same
  update and logs the global loss. A data module shards with `data_parallel_rank()` / `data_parallel_size()`.
- independent ranks (`init(data_parallel=False)`, a prompt list): ranks share nothing but the launcher;
  rank / world size only say which share of the work is whose, and the data-parallel size stays 1.

The scheduler process runs the script too: inside `mindspore.communication.init()` it serves the cluster;
when that returns, `init()` ends the scheduler process (it must not train). So every check that can fail on
user input belongs before `init()`: a worker that exits with an error after the cluster is built leaves the
scheduler waiting for its heartbeat to time out (tens of seconds) before msrun returns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from mindspore import nn, ops

ROLE_VAR, WORKER_NUM_VAR = "MS_ROLE", "MS_WORKER_NUM"
WORKER, SCHEDULER = "MS_WORKER", "MS_SCHED"


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    data_parallel: bool = False  # ranks share one model (gradients all-reduced) rather than work apart

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_topology = Topology()


def msrun_role() -> Optional[str]:
    """MS_WORKER or MS_SCHED when this process was started by msrun (or another dynamic-cluster launch), else None."""
    role = os.environ.get(ROLE_VAR)
    return role if role in (WORKER, SCHEDULER) else None


def launched_world_size() -> int:
    """The number of workers msrun started (MS_WORKER_NUM), known before `init()`; 1 without msrun."""
    if msrun_role() is None:
        return 1
    value = os.environ.get(WORKER_NUM_VAR, "")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise RuntimeError(f"{ROLE_VAR}={os.environ[ROLE_VAR]} but {WORKER_NUM_VAR}={value!r} is not a worker count")
    return n


def init(data_parallel: bool) -> Topology:
    """Join the msrun cluster (once; the device must be set first) and return this process's Topology.

    Without msrun: Topology() (rank 0 of 1), no communication. In msrun's scheduler process this does not
    return: the scheduler's work is done inside mindspore.communication.init(), then the process exits."""
    global _topology
    role = msrun_role()
    if role is None:
        _topology = Topology()
        return _topology
    from mindspore.communication import get_group_size, get_rank
    from mindspore.communication import init as init_communication
    init_communication()
    if role == SCHEDULER:
        raise SystemExit(0)
    _topology = Topology(int(get_rank()), int(get_group_size()), bool(data_parallel))
    return _topology


def topology() -> Topology:
    return _topology


def data_parallel_rank() -> int:
    """This rank's shard index of a data-parallel batch (0 when ranks are independent or alone)."""
    return _topology.rank if _topology.data_parallel else 0


def data_parallel_size() -> int:
    """How many shards a data-parallel batch is split into (1 when ranks are independent or alone)."""
    return _topology.world_size if _topology.data_parallel else 1


class MeanAcrossRanks(nn.Cell):
    """construct(grads tuple, loss) -> (mean of grads over ranks, mean of loss over ranks), for the compiled step.

    The gradients go through MindSpore's nn.DistributedGradReducer (AllReduce sum, fused per `fusion_type`, times
    1 / world_size, computed in float32); the loss through one AllReduce. With equal shards and a loss that is
    a mean over its shard, these are the gradient and the loss of the combined batch."""

    def __init__(self, parameters, world_size: int):
        super().__init__(auto_prefix=False)
        self.grads = nn.DistributedGradReducer(parameters, mean=True, degree=int(world_size))
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)
        self.scale = 1.0 / int(world_size)

    def construct(self, grads, loss):
        return self.grads(grads), self.all_reduce(loss) * self.scale


def grad_reducer(parameters) -> Optional[MeanAcrossRanks]:
    """The reducer make_train_step takes (core/train_step.py): None unless ranks train one model in data
    parallel, so a single process (or independent ranks) keeps the step unchanged, bit for bit."""
    n = data_parallel_size()
    return MeanAcrossRanks(parameters, n) if n > 1 else None
