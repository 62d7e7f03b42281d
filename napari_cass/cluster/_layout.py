"""How many segmentation workers a Ray cluster gets, and what each one holds.

Every worker (a Ray actor) loads the models once, so a worker is sized to keep one model
copy busy: one GPU each on GPU nodes; on CPU-only clusters a few CPU threads each (PyTorch
scales well up to about four threads on ViT-B crops, and each worker costs a model copy in
memory). The numbers come from the cluster's node list, so a worker is never asked for more
than a node has (such an actor would wait for ever).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_CPU_THREADS", "WorkerLayout", "plan_workers"]

#: CPU threads per worker on CPU-only clusters, unless ``--threads`` says otherwise.
DEFAULT_CPU_THREADS = 4


@dataclass(frozen=True)
class WorkerLayout:
    """The actor pool of a run.

    Attributes
    ----------
    workers : int
        Actors in the pool (each loads the models once).
    gpus_per_worker : int
        1 on GPU clusters, else 0.
    cpus_per_worker : int
        CPUs reserved per actor; on CPU workers also PyTorch's thread count.
    device : str
        The ``--device`` the workers build their models on (Ray makes the GPU it gives an
        actor that actor's ``cuda:0``).
    """

    workers: int
    gpus_per_worker: int
    cpus_per_worker: int
    device: str

    def describe(self) -> str:
        if self.gpus_per_worker:
            return f"{self.workers} GPU worker(s), 1 GPU each"
        return f"{self.workers} CPU worker(s), {self.cpus_per_worker} thread(s) each"


def plan_workers(nodes: Sequence[Mapping[str, float]], device: str, threads: int | None,
                 images: int) -> WorkerLayout:
    """Size the actor pool from the live nodes' resources.

    Parameters
    ----------
    nodes : sequence of mapping
        Each live node's resources (``{"CPU": 16.0, "GPU": 2.0, ...}``, as ``ray.nodes()``).
    device : str
        The user's ``--device``: ``auto`` (GPUs when the cluster has any), ``cpu``,
        ``cuda`` / ``cuda:N`` (GPUs required), or another torch device for CPU-slot workers.
    threads : int or None
        ``--threads``: CPUs per worker on CPU workers.
    images : int
        Images to segment: no more workers than images.

    Raises
    ------
    ValueError
        GPUs asked for on a cluster without any, or more threads than the largest node has.
    """
    gpus_by_node = [math.floor(n.get("GPU", 0.0)) for n in nodes]
    cpus_by_node = [math.floor(n.get("CPU", 0.0)) for n in nodes]
    wants_gpu = device.startswith("cuda")
    if wants_gpu and not any(gpus_by_node):
        raise ValueError(f"--device {device} asks for GPUs, but the Ray cluster has none "
                         f"({len(nodes)} node(s), {sum(cpus_by_node)} CPUs); use --device cpu or auto, "
                         "or add GPU nodes.")
    if (wants_gpu or device == "auto") and any(gpus_by_node):
        workers = max(1, min(sum(gpus_by_node), images))
        return WorkerLayout(workers, 1, 1, "cuda")
    largest = max(cpus_by_node, default=0)
    if largest < 1:
        raise ValueError("The Ray cluster has no CPUs to run workers on; check `ray status`.")
    per_worker = threads if threads else min(DEFAULT_CPU_THREADS, largest)
    if per_worker > largest:
        raise ValueError(f"--threads {per_worker} is more than the largest Ray node has ({largest} "
                         f"CPUs); give --threads {largest} or less.")
    slots = sum(c // per_worker for c in cpus_by_node)
    workers = max(1, min(slots, images))
    return WorkerLayout(workers, 0, per_worker, "cpu" if device == "auto" else device)
