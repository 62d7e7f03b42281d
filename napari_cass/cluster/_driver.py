"""The driver of ``napari-cass segment --ray``: the CLI's run, its images spread over Ray.

Everything before the models is the single-machine CLI's own code (class checks, output
plan, folder lock, resume decision: :func:`napari_cass.cli._segment._cmd_segment`, which
calls :func:`segment_on_ray` in place of its per-image loop). Here the images left to do
become a Ray dataset of paths; ``map_batches`` with :class:`~._worker.SegmentWorker` runs
one actor per GPU (or per few CPUs), each loading the models once and writing masks and
overlays straight into the output folder, which must therefore be shared storage mounted
at the same path on every node. The driver writes ``classes.json`` when the first worker
has built its models (through :class:`~._worker.TableGate`), shows progress and ETA as
results come back, and lists every image that failed, in ``<out>/failed.json`` and on
the console: none is dropped silently.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._failures import FAILED_FILE, WORKER_RETRIES, report_failures
from ._layout import WorkerLayout, plan_workers
from ._worker import SegmentWorker, TableGate, failure_reason

__all__ = ["FAILED_FILE", "MAX_BLOCKS", "WORKER_RETRIES", "require_ray", "segment_on_ray"]
#: Up to this many images, each is its own block (progress and retries per image); above,
#: images are grouped, so the driver does not create millions of objects.
MAX_BLOCKS = 10_000
#: Environment variables passed on to the workers: they change the masks (precision) or
#: what the workers may do, so every node must see the driver's values.
FORWARDED_ENV = ("NAPARI_CASS_PRECISION", "HF_HUB_OFFLINE")
_INSTALL = 'pip install "napari-cass[cluster]" (or pip install "ray[data]")'


def _say(message: str) -> None:
    from ..io import printable

    print(f"napari-cass: {printable(message, newlines=True)}", file=sys.stderr)


def require_ray(args: argparse.Namespace | None = None) -> Any:
    """Return the ``ray`` module, or raise a message saying how to install it.

    Also refuses ``--ray`` together with ``--server`` (one runs the models on the cluster,
    the other on a server: choose one).
    """
    if args is not None and getattr(args, "server", None):
        raise ValueError("--ray and --server cannot be combined: --ray runs the models on a Ray "
                         "cluster, --server on a napari-cass server. Choose one.")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ModuleNotFoundError(f"--ray needs Ray Data, which is not installed ({exc}); {_INSTALL}.") from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to (or start) a Ray cluster; True when this call did, so the caller disconnects."""
    if ray.is_initialized():  # a caller (a notebook, a test) connected already: use that cluster
        return False
    try:
        ray.init(address=address or None, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"at {address!r}" if address else "(none running here, and a local one did not start)"
        raise ConnectionError(
            f"Could not connect to a Ray cluster {where}: {failure_reason(exc).rstrip('.')}. Start one with "
            "`ray start --head` (then `ray start --address HEAD:6379` on the other nodes), or use --ray "
            "alone for a local one."
        ) from None
    return True


def _root_cause(exc: BaseException) -> BaseException:
    """The user's error inside Ray's wrappers (task errors, Ray Data's user-code errors)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _worker_env() -> dict[str, Any]:
    """Settings of this shell the workers need too (nodes elsewhere do not share its environment)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _worker_args(args: argparse.Namespace, layout: WorkerLayout) -> argparse.Namespace:
    """The arguments a worker builds its models from: its device and threads, nothing local."""
    values = {k: v for k, v in vars(args).items() if k not in ("func", "ray")}
    values["device"] = layout.device
    if not layout.gpus_per_worker:
        values["threads"] = layout.cpus_per_worker
    return argparse.Namespace(**values)


class _TableWriter(threading.Thread):
    """Writes ``classes.json`` from the first worker's description, then lets the workers start."""

    def __init__(self, ray: Any, gate: Any, write: Callable[[dict], Any]):
        super().__init__(name="napari-cass classes.json", daemon=True)
        self._ray, self._gate, self._write = ray, gate, write
        self.written = False
        self.error: BaseException | None = None

    def run(self) -> None:
        from .. import __version__

        try:
            description = self._ray.get(self._gate.first_description.remote())
        except Exception:  # the run ended before any worker got this far
            return
        message = None
        try:
            theirs = description.get("napari_cass_version")
            if theirs != __version__:
                raise RuntimeError(f"The Ray workers run napari-cass {theirs}, this driver {__version__}; "
                                   "install the same version on every node.")
            self._write(description)
            self.written = True
        except Exception as exc:
            self.error = exc
            message = f"classes.json was not written: {failure_reason(exc)}"
        try:
            self._ray.get(self._gate.open.remote(message))
        except Exception:
            pass


def segment_on_ray(args: argparse.Namespace, plan: Any, decision: Any, todo: Sequence[Any], classes: Any,
                   prompts: Sequence[Any], settings: dict[str, Any], max_pixels: int | None, *,
                   build: Callable[[Any], Any] | None = None) -> int:
    """Segment ``todo`` on a Ray cluster; the CLI's step 2 onwards. Returns the exit code.

    Parameters
    ----------
    args : argparse.Namespace
        The ``segment`` arguments; ``args.ray`` is the cluster address ("" for Ray's default:
        ``$RAY_ADDRESS``, a cluster started here with ``ray start``, else a new local one).
    plan, decision, todo, classes, prompts, settings, max_pixels
        What the CLI's step 1 decided (see ``_cmd_segment``).
    build : callable, optional
        ``build(args) -> Segmenter`` run on every worker; default the CLI's
        ``build_segmenter`` (looked up when called, so tests that replace it reach the workers).

    Returns
    -------
    int
        0 when every image is done, 1 when some failed (listed in ``<out>/failed.json``).
    """
    from ..cli import _segment as cli_segment
    from ..cli._console import terminate_as_interrupt

    ray = require_ray(args)
    build = build or cli_segment.build_segmenter
    started = _connect(ray, getattr(args, "ray", None))
    try:
        with terminate_as_interrupt():  # ray.init put its own SIGTERM handler (a bare exit) in place
            return _run(ray, args, plan, decision, list(todo), classes, prompts, settings, max_pixels, build,
                        cli_segment.run_description)
    finally:
        if started:
            ray.shutdown()


def _run(ray, args, plan, decision, todo, classes, prompts, settings, max_pixels, build, describe) -> int:
    from ..cli._console import Progress
    from ..io import image_done, printable, start_run

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    layout = plan_workers(nodes, str(args.device), args.threads, len(todo))
    _say(f"Ray: {len(todo)} image(s) on {layout.describe()} ({len(nodes)} node(s)).")
    gate = ray.remote(num_cpus=0)(TableGate).remote()
    table = _TableWriter(ray, gate, lambda extra: start_run(plan, classes, settings, decision, extra=extra))
    table.start()
    rows = [{"source": str(item.source), "name": item.name, "mask": os.path.abspath(item.mask),
             "overlay": os.path.abspath(item.overlay)} for item in todo]
    context = ray.data.DataContext.get_current()
    saved = {k: getattr(context, k) for k in ("enable_progress_bars", "max_errored_blocks",
                                               "print_on_execution_start") if hasattr(context, k)}
    # Our bar replaces Ray's; a block that fails after its retries is reported below, not fatal.
    for key, value in (("enable_progress_bars", False), ("max_errored_blocks", -1),
                       ("print_on_execution_start", False)):
        if key in saved:
            setattr(context, key, value)
    tally = _Tally()
    error: BaseException | None = None
    data_log = logging.getLogger("ray.data")
    log_level = data_log.level
    data_log.setLevel(logging.ERROR)  # "progress bars disabled", "execution finished": our bar says it
    bar = Progress(len(todo), "Images")
    began = time.perf_counter()
    try:
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS)).map_batches(
            SegmentWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=layout.workers),
            num_cpus=layout.cpus_per_worker, num_gpus=layout.gpus_per_worker,
            fn_constructor_kwargs={"build": build, "args": _worker_args(args, layout), "describe": describe,
                                   "prompts": list(prompts), "classes": classes, "max_pixels": max_pixels,
                                   "gate": gate, "worker_retries": WORKER_RETRIES},
            **_worker_env(),
        )
        sources = {item.name: item.source for item in todo}
        for row in dataset.iter_rows():
            failure = tally.add(row)
            bar.advance()
            if failure is not None:
                name = str(row["name"])
                bar.write(f"napari-cass: skipped {printable(sources.get(name, name))}: {failure}")
    except KeyboardInterrupt:
        bar.close()
        done = len(decision.done) + sum(image_done(item) for item in todo)  # results lag behind the files
        _say(f"interrupted: {done} of {len(plan.images)} image(s) are done in {printable(plan.out_dir)}; "
             "run the same command again to finish the others.")
        raise
    except Exception as exc:  # the pipeline stopped: every image without a result is listed below
        error = _root_cause(exc)
    finally:
        bar.close()
        for key, value in saved.items():
            setattr(context, key, value)
        data_log.setLevel(log_level)
    if table.error is not None:
        raise table.error
    if not table.written:  # no worker ever started: nothing was written
        try:
            reason = ray.get(gate.worker_error.remote(), timeout=30)
        except Exception:  # the gate is gone with the cluster
            reason = None
        if reason is None:
            reason = failure_reason(error) if error is not None else "no worker started"
        raise RuntimeError(f"The Ray workers could not start, {reason}" if reason.startswith("on node ")
                           else f"The Ray workers could not start: {reason}")
    _say_throughput(tally, time.perf_counter() - began, layout)
    missing = ("the Ray run stopped: " + failure_reason(error) if error is not None else
               "no result from the Ray workers (Ray dropped it; see the Ray logs)")
    return report_failures(plan, decision, todo, tally.seen, tally.failed, missing)


@dataclass
class _Tally:
    """What came back from the workers, kept small (names, failures, busy time)."""

    seen: set[str] = field(default_factory=set)
    failed: dict[str, tuple[str, int]] = field(default_factory=dict)
    busy_seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> str | None:
        """Record one worker row; returns its error, or None when the image was written."""
        name = str(row["name"])
        self.seen.add(name)
        if bool(row["ok"]):
            self.failed.pop(name, None)
            self.busy_seconds += float(row["seconds"])
            return None
        self.failed[name] = (str(row["error"]), int(row["attempts"]))
        return self.failed[name][0]

    @property
    def written(self) -> int:
        return len(self.seen) - len(self.failed)


def _say_throughput(tally: _Tally, seconds: float, layout: WorkerLayout) -> None:
    """Images per second, overall (worker start-up included) and per worker once running."""
    if not tally.written or seconds <= 0:
        return
    per_image = tally.busy_seconds / tally.written
    _say(f"{tally.written} image(s) in {seconds:.1f} s, worker start-up included: "
         f"{tally.written / seconds:.2f} image/s; {per_image:.2f} s per image on a worker, so "
         f"{layout.workers / per_image:.2f} image/s once the {layout.workers} worker(s) run.")
