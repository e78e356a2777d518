"""Executors: run ``tasks.run_shard`` over shards on Ray, or in this process.

Both executors take the same arguments and report each shard through
callbacks, so the driver and the progress bar do not care which one runs.
Ray lives here and nowhere else.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .cluster_watch import ClusterWatch, host_port, reason_of
from .errors import ClusterError, RejectedResults, StorageDown, is_storage_full
from .memory import is_memory_failure
from .plan import Shard
from .storage import is_remote, is_transient
from .store import ShardRecord

# the unit of work, ``tasks.shard_task(plan)``: (spec, shard, memory_retries) -> its record
Unit = Callable[[Any, Shard, int], ShardRecord]
OnDone = Callable[[ShardRecord], None]
OnFailed = Callable[[Shard, int, str], None]


WAIT_S = 1.0  # how long one ray.wait blocks before the cluster watch is asked

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's processes take 127.0.0.1 as the node address


RAY_WORKER_ADDRESS_SPACE = 2 * 2**30  # a Ray worker with torch, zarr and the engine imported maps 1.8-2.0 GB (Ray 2.60)
OBJECT_STORE_SHARE = 4  # under ``ulimit -v``, the object store takes at most this fraction of a process's address space


def address_space_limit() -> int | None:
    """This process's address-space limit in bytes (``ulimit -v``, which Ray's processes inherit); None: unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def ray_default_object_store() -> int:
    """The object store size a new local Ray takes by itself: 30% of the available memory, at most /dev/shm's size."""
    from ray._private import ray_constants

    try:
        from ray._private.utils import estimate_available_memory, resolve_object_store_memory

        return int(resolve_object_store_memory(estimate_available_memory(), None))
    except (ImportError, TypeError):  # another Ray's private API: its documented rule
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION * memory)


def object_store_under_limit(limit: int | None, default: int) -> int | None:
    """The object store size for a local Ray whose every process may map at most ``limit`` bytes; None: Ray's ``default``.

    Every Ray process (the driver and each worker) maps the whole object store,
    which Ray sizes to 30% of the available memory; under a ``ulimit -v`` below
    that plus a worker's own ~2 GB, each worker fails to start (``mmap
    failed``) and Ray starts another forever: the job hung without a word. The
    shards pass only small records through the store (results go to the
    store), so a quarter of the limit is plenty; a worker keeps at least as
    much again for its chunks. Raises a ``ClusterError`` when the limit leaves
    a worker no room.

    Example:
        >>> object_store_under_limit(None, 7 * 2**30) is None, object_store_under_limit(64 * 2**30, 7 * 2**30)
        (True, None)
        >>> object_store_under_limit(8 * 2**30, 7 * 2**30) // 2**20
        2048
    """
    from ray._private import ray_constants

    if limit is None:
        return None
    size = limit // OBJECT_STORE_SHARE
    if default <= size:
        return None
    if size < ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES or limit < RAY_WORKER_ADDRESS_SPACE + 2 * size:
        raise ClusterError(
            f"this shell limits each process to {limit / 2**30:.1f} GiB of address space (ulimit -v {limit // 1024}): "
            f"a local Ray worker with torch needs ~{RAY_WORKER_ADDRESS_SPACE / 2**30:.0f} GiB of it, plus Ray's object "
            "store and the job's chunks; raise the limit to 4 GiB or more (`ulimit -v unlimited`, or your "
            "scheduler's memory request), or run without Ray: --executor inline"
        )
    return int(size)


def start_local_ray(**kwargs: Any) -> None:
    """Start a new Ray on this machine that listens on the loopback interface only.

    ``address="local"`` starts a new Ray even when ``RAY_ADDRESS`` is set or
    another Ray runs on the host. By default Ray gives its GCS, raylet, agents
    and workers the machine's routable address and binds them on every
    interface; a single-machine run needs none of that. Ray's own switch for a
    one-machine Ray (the behaviour it has on macOS and Windows, where
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is off) makes the node address
    127.0.0.1, and Ray then binds every server to it (``ss -ltnp`` shows only
    127.0.0.1). The switch is read by this process when Ray starts and by the
    processes Ray starts (they inherit it), and restored afterwards so that a
    later join of a real cluster from the same process is not affected.
    """
    import ray
    from ray._private import ray_constants

    kwargs.setdefault("include_dashboard", False)
    limit = address_space_limit()
    store = None if limit is None else object_store_under_limit(limit, ray_default_object_store())
    if store is not None:
        kwargs.setdefault("object_store_memory", store)
    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (``timeout``, a batch scheduler, ``kill``) stop the driver as Ctrl-C does.

    ``ray.init`` makes SIGTERM exit the driver (``sys.exit``), after which Ray's own handler dumps a stack
    and the process aborts (exit 134); as a ``KeyboardInterrupt`` it finalizes the store, says the
    committed shards are kept and exits 130. Only the main thread may set a handler.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


NODE_LEFT = "a Ray node left the cluster (its raylet ended); the shards it ran are retried on the other nodes"


def quiet_node_deaths(notify: Callable[[str], None] | None) -> None:
    """Say a dead raylet in one line (``notify``), not as Ray's report of it on the driver.

    Ray's driver prints every error the cluster publishes; a worker node's raylet that dies
    (SIGKILL, the OOM killer, its machine gone) is published by each of its agents as
    "Raylet is terminated. Termination is unexpected." followed by its last 20 log lines
    (a "[state-dump]" of timings): about 40 lines for an event the executor handles by
    retrying the node's shards. Ray has no switch for that thread's output, so its printer
    (``ray._private.worker.print_to_stdstream``, looked up at each message) is wrapped;
    every other message passes. With ``submit -v`` nothing is wrapped.
    """
    try:
        import ray._private.worker as ray_worker
    except ImportError:  # another Ray's layout: its report is printed as it is
        return
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "quiet_node_deaths", False):
        return
    said: set[str] = set()

    def print_to_stdstream(data, *args, **kwargs) -> None:
        lines = (data.get("lines") if isinstance(data, dict) else None) or []
        if lines and data.get("pid") == "raylet" and any(str(x).startswith("Raylet is terminated") for x in lines):
            text = "\n".join(map(str, lines))
            if text not in said:  # each of the node's agents publishes the same report
                said.add(text)
                if notify is not None:
                    notify(NODE_LEFT)
            return
        printer(data, *args, **kwargs)

    print_to_stdstream.quiet_node_deaths = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


class Executor(Protocol):
    """What the driver needs of an executor (``InlineExecutor``, ``RayExecutor``).

    The driver calls ``start`` (join or start the compute), ``describe``,
    ``check(spec)`` (raise ``ClusterError`` before any store exists when the
    job cannot run here) and ``run``, which calls ``unit(spec, shard,
    memory_retries)`` for every shard and reports each through
    ``on_done(record)`` or, once its ``execution.retries`` are spent,
    ``on_failed(shard, attempts, error)``. Both executors retry a failed
    attempt themselves (``Attempts``): one that ran out of memory is retried
    with ``memory_retries`` one higher, so it runs with smaller blocks and chunks. After a full disk, or
    a storage outage (``Attempts.storage_down``), no further shard starts; an outage then raises
    ``StorageDown`` once the running shards have ended. The CLI sets
    ``notify`` (a line for the user: why tasks wait) and ``verbose`` (the
    compute's own logging).
    """

    notify: Callable[[str], None] | None
    verbose: bool

    def start(self) -> None: ...

    def describe(self) -> str: ...

    def check(self, spec: Any) -> None: ...

    def run(self, unit: Unit, spec: Any, shards: Sequence[Shard], on_done: OnDone, on_failed: OnFailed) -> None: ...


@dataclass
class InlineExecutor:
    """Run shards one after another in this process (for debugging: breakpoints work)."""

    notify: Callable[[str], None] | None = None  # nothing to tell: shards never wait here
    verbose: bool = False  # no logging of its own

    def start(self) -> None:
        """Nothing to start: shards run in this process."""

    def describe(self) -> str:
        return "inline (this process, no Ray)"

    def check(self, spec: Any) -> None:
        """Nothing to check: shards run in this process, on its device."""

    def run(self, unit: Unit, spec: Any, shards: Sequence[Shard], on_done: OnDone, on_failed: OnFailed) -> None:
        attempts = Attempts(spec.execution.retries, remote=is_remote(spec.store.path))
        for shard in shards:
            while True:
                try:
                    record = unit(spec, shard, attempts.memory_retries(shard.id))
                except KeyboardInterrupt:
                    raise
                except Exception as err:
                    if not attempts.failed(shard.id, err):
                        on_failed(shard, attempts.count(shard.id), _format_error(err))
                        break
                else:
                    attempts.committed()
                    on_done(record)
                    break
            if attempts.stopped:
                break  # the other shards would compute only to fail writing
        attempts.raise_if_storage_down(spec.store.path)


CLIENT_TRIES = 3  # ray:// joins tried when the head's client server fails to start a driver's server
# the head's client server failed to start, or its per-client server died starting (a loaded head): both pass
CLIENT_START_FAILED = ("Starting Ray client server failed", "Initialization failure from server")


@dataclass
class RayExecutor:
    """Run shards as Ray tasks with bounded in-flight work and Ray's own retries.

    Args:
        local: start a local Ray sized to this machine (when none is running).
        address: cluster to join (default: ``RAY_ADDRESS``).
    """

    local: bool = False
    address: str | None = None
    waiting: str | None = None  # set by ``resources`` when the tasks wait for the autoscaler to add GPUs
    _node_types: dict | None = None
    notify: Callable[[str], None] | None = None  # tells the user why the tasks wait (the CLI prints it)
    verbose: bool = False  # Ray's own INFO/WARNING lines and the workers' logs (`submit -v`); else errors only
    joined: str | None = None  # the cluster address this driver joined (watched while shards run), None for --local

    def _logging(self) -> dict:
        import logging

        return {"logging_level": logging.INFO if self.verbose else logging.ERROR, "log_to_driver": self.verbose}

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if not self.verbose:
            quiet_node_deaths(self.notify)
        if self.local:
            start_local_ray(num_cpus=os.cpu_count(), **self._logging())
            from .watchdog import children_of_this_process, watch

            watch(children_of_this_process())  # a killed driver leaves no Ray behind
            sigterm_as_interrupt()
            return
        from .cluster import resolve_address

        source = "--address" if self.address else "RAY_ADDRESS"
        address = resolve_address(cluster_address(self.address), source)
        check_cluster(address, source)
        from .cluster import ray_job_working_dir

        working_dir = ray_job_working_dir()
        if working_dir is not None:
            # in a Ray job, Ray unpacks the job's working dir afresh when this driver's tasks start
            # (the directory this process stands in is replaced by a new one at the same path); the
            # job's paths are absolute by now (load_spec), so the driver stands beside it instead
            os.chdir(os.path.dirname(working_dir))
        self._init(ray, address)
        self.joined = address
        sigterm_as_interrupt()

    def _init(self, ray, address: str) -> None:
        """ray.init, tried again when a Ray Client server could not start its per-driver server.

        The head's client proxy starts one server process per driver; on a loaded head that start
        can fail once ("Starting Ray client server failed", or "Initialization failure from server" when
        that server dies starting) and succeed when asked again.
        """
        for attempt in range(CLIENT_TRIES):
            try:
                ray.init(address=address, **self._logging())
                return
            except Exception as err:
                transient = any(text in str(err) for text in CLIENT_START_FAILED)
                if address.startswith("ray://") and transient and attempt + 1 < CLIENT_TRIES:
                    ray.shutdown()
                    time.sleep(2.0 * (attempt + 1))
                    continue
                raise ClusterError(f"cannot join the Ray cluster at {address!r}: {err}") from None

    def describe(self) -> str:
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        return f"ray ({int(resources.get('CPU', 0))} CPUs, {gpus} GPUs, {sum(1 for n in ray.nodes() if n.get('Alive'))} nodes)"

    @staticmethod
    def check_store(spec) -> None:
        """Raise a ClusterError for a ``memory://`` store: it lives in this process, where no Ray worker writes."""
        if str(spec.store.path).startswith("memory://"):
            raise ClusterError(
                f"store.path: {spec.store.path} is this process's memory, which Ray's workers cannot reach; "
                "use --executor inline with it, or a path or bucket every worker sees"
            )

    def check(self, spec) -> None:
        """Raise a ClusterError when the cluster cannot run the job's tasks (before any store exists).

        That includes a local ``store.path`` that a node on another host does not see (``check_store_seen``).
        """
        self.start()
        cpus, gpus, _ = self.resources(spec)
        self.check_store_seen(spec, cpus, gpus)

    def check_store_seen(self, spec, cpus: float = 1.0, gpus: float = 0.0) -> None:
        """Raise a ClusterError when a node on another host than the driver does not see the local ``store.path``.

        Only the alive nodes that can run a shard (``cpus``, ``gpus`` free of any task) and whose address is not
        the driver's are asked: the driver writes a probe file with a random token beside the store
        (``store_probe.probe_file``, removed whatever happens) and one task pinned to each such node reads it back.
        A bucket URL, ``--local`` and a cluster all on the driver's host are not probed (no task, no wait). A node
        that does not answer within ``$PIPELINE_STORE_PROBE_S`` (default 20) s is not waited for: ``notify``
        hears so, and a shard that runs there is still checked by the worker (``tasks.check_store_here``), as
        on the nodes an autoscaler adds later.
        """
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .store_probe import probe_file, probe_timeout_s, sees_probe

        path = spec.store.path
        if self.local or is_remote(path):
            return
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        here = self._driver_addresses(ray, nodes)
        others = [
            n
            for n in nodes
            if n.get("NodeManagerAddress") not in here
            and n.get("Resources", {}).get("CPU", 0) >= cpus
            and n.get("Resources", {}).get("GPU", 0) >= gpus
        ]
        if not others:
            return
        timeout = probe_timeout_s()
        task = ray.remote(num_cpus=0, max_retries=0)(sees_probe)  # no CPU: a busy node answers too
        with probe_file(path) as (probe, token):
            asked = {
                task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                    probe, token
                ): n
                for n in others
            }
            ready, late = ray.wait(list(asked), num_returns=len(asked), timeout=timeout)
            unseen, silent = [], [asked[ref] for ref in late]
            for ref in ready:
                try:
                    seen, hostname = ray.get(ref)
                except ray.exceptions.RayError:  # the node went, or its worker could not start
                    silent.append(asked[ref])
                    continue
                if not seen:
                    unseen.append({**asked[ref], "NodeManagerHostname": hostname})
        if unseen:
            of = f"{len(unseen)} of the {len(others)} nodes on other hosts than this driver"
            raise ClusterError(
                f"store.path {path} is a folder on this machine's disk, which {of} do not see: "
                f"{_node_names(unseen)}; every node that runs shards writes into it. Use a folder every node "
                "mounts at the same path (NFS, EFS, a shared volume), or a bucket URL (store.path: "
                "s3://bucket/results/run.zarr, docs/object-storage.md)"
            )
        if silent and self.notify is not None:
            self.notify(
                f"could not ask {_node_names(silent)} within {timeout:g} s whether it sees store.path {path} "
                "(busy, or slow to start a worker): going on; a shard that runs where the store is not seen fails "
                "its attempt saying so"
            )
        if self.notify is not None:
            answered = [n for n in others if n not in silent]
            if answered:
                self.notify(
                    f"store.path {path}: seen by the nodes on other hosts than this driver ({_node_names(answered)})"
                )

    def _driver_addresses(self, ray, nodes: list[dict]) -> set[str]:
        """The node addresses of this driver's host: its Ray node's, or (Ray client) the addresses of this machine."""
        import socket

        client = ray.util.client.ray.is_connected()
        if not client:
            node_id = ray.get_runtime_context().get_node_id()
            return {n["NodeManagerAddress"] for n in nodes if n.get("NodeID") == node_id}
        addresses = set()
        head = host_port(self.joined or "")
        # the addresses this machine reaches the head and the default route from (Ray's own pick of a node
        # address on a machine); a UDP connect sends nothing
        for target in ([head[0]] if head else []) + ["8.8.8.8"]:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.connect((target, 80))
                    addresses.add(udp.getsockname()[0])
            except OSError:
                pass
        try:
            addresses.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
        except OSError:
            pass
        return addresses

    def resources(self, spec) -> tuple[float, float, int]:
        """(cpus, gpus) per task and the in-flight bound for this cluster."""
        import ray

        cluster = ray.cluster_resources()
        gpus = spec.execution.gpus_per_task
        now = cluster.get("GPU", 0)
        # GPUs the autoscaler can add: node types with GPUs count even while none of them is up
        scalable = self.gpu_node_types() if (gpus == "auto" and now < 1) or (gpus != "auto" and gpus > now) else {}
        per_node = max((t["resources"]["GPU"] for t in scalable.values()), default=0)
        if gpus == "auto":
            gpus = 1.0 if now >= 1 or per_node >= 1 else 0.0
        cpus = spec.execution.cpus_per_task
        if gpus > now and gpus > per_node:
            from .cluster import describe_node_types

            offer = describe_node_types(self._node_types or {})
            raise ClusterError(
                f"execution.gpus_per_task is {gpus:g} but the cluster has {now:g} GPUs and its autoscaler can add "
                f"none ({offer}); use gpus_per_task: auto (GPUs when the cluster has or can add them) or 0, "
                'or add a node type with GPUs (resources: {"GPU": 1}) to the cluster config'
            )
        if gpus > now:  # the autoscaler starts GPU workers for the pending tasks
            self.waiting = (
                f"the cluster has {now:g} GPUs now: the shards wait for the autoscaler to start GPU workers "
                f"({', '.join(scalable)}), which takes as long as a node takes to boot"
            )
            max_gpus = sum(t["resources"]["GPU"] * max(t["max_workers"], 1) for t in scalable.values())
            slots = max(now, max_gpus) / gpus
        else:
            slots = now / gpus if gpus else cluster.get("CPU", 1) / cpus
        self.check_memory(spec)
        in_flight = spec.execution.max_in_flight
        if in_flight == "auto":
            in_flight = max(2, int(2 * max(slots, 1)))
        return cpus, gpus, int(in_flight)

    def check_memory(self, spec) -> None:
        """Raise a ClusterError when no node of the cluster (or of its node types) has ``execution.memory_limit``."""
        import ray

        limit = getattr(spec.execution, "memory_limit", None)
        if limit is None:
            return
        offered = [n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")]
        types = self._scalable_types().values()
        if any("memory" not in t.get("resources", {}) for t in types):
            return  # a node type that does not declare its memory: Ray finds out when one starts
        largest = max([*offered, *(t["resources"]["memory"] for t in types)], default=0)
        if largest < limit:
            from .memory import format_size

            raise ClusterError(
                f"execution.memory_limit is {format_size(limit)} but no node of the cluster offers that much "
                f"to a task (the largest offers {format_size(largest)}); lower execution.memory_limit to at most "
                f"{format_size(largest)}, or add nodes with more memory"
            )

    def _scalable_types(self) -> dict:
        """Node types the autoscaler can start (none on a local Ray)."""
        from .cluster import node_types

        if self.local:
            return {}
        if self._node_types is None:
            self._node_types = node_types()
        return self._node_types or {}

    def gpu_node_types(self) -> dict:
        """Node types with GPUs that the cluster's autoscaler can start (none on a local Ray)."""
        from .cluster import gpu_node_types, node_types

        if self.local:
            return {}
        if self._node_types is None:
            self._node_types = node_types()
        return gpu_node_types(self._node_types)

    def run(self, unit: Unit, spec: Any, shards: Sequence[Shard], on_done: OnDone, on_failed: OnFailed) -> None:
        import ray

        self.start()
        cpus, gpus, bound = self.resources(spec)
        if self.waiting and self.notify is not None:
            self.notify(self.waiting)
        remote = ray.remote(unit).options(
            num_cpus=cpus,
            num_gpus=gpus,
            memory=getattr(spec.execution, "memory_limit", None),  # Ray places the task where this much is free
            # every retry is made below (Attempts), also of a worker that died: Ray would resubmit the
            # same arguments, where a shard killed for memory needs smaller blocks and chunks
            max_retries=0,
            retry_exceptions=False,
            name=f"{spec.name}-shard",
        )
        spec_ref = ray.put(spec)
        waiting = _Lookahead(shards)  # shards are taken as they are submitted: a huge plan is never listed
        running: dict = {}
        # Ray prints a task's whole traceback on the driver every time it retries one that raised;
        # retried here instead, the worker records the traceback in the store (tasks.run_shard) and
        # the console gets one line per attempt (live.LiveRun).
        attempts = Attempts(spec.execution.retries, remote=is_remote(spec.store.path))
        # A cluster that goes away mid-run (its head killed, the network cut) makes Ray's calls block
        # and, a minute later, Ray end this process without a word: the watch notices in
        # $PIPELINE_CLUSTER_LOST_S seconds and raises ClusterLost (the driver keeps what is committed).
        # On an interrupt the exception propagates and the driver exits: Ray ends a job's
        # tasks when its driver goes (cancelling them here trips a Ray 2.60 assertion). A
        # stopped task never wrote its commit marker, so its shard stays pending for a re-run.
        with ClusterWatch(self.joined or "local") as watch:
            # after a full disk or a storage outage no more shards start (they would compute only to fail
            # writing); the running ones finish or fail
            while (waiting and not attempts.stopped) or running:
                while waiting and len(running) < bound and not attempts.stopped:
                    shard = waiting.pop()
                    running[remote.remote(spec_ref, shard, attempts.memory_retries(shard.id))] = shard
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    shard = running.pop(ref)
                    try:
                        record = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:  # the shard raised
                        cause = getattr(err, "cause", None) or err
                        if attempts.failed(shard.id, cause):
                            waiting.appendleft(shard)
                        else:
                            on_failed(shard, attempts.count(shard.id), _format_error(cause))
                    except ray.exceptions.RayError as err:  # worker died (killed for memory), node lost, ...
                        if not watch.probe():  # the head is gone: not the shard's fault, no attempt counted
                            waiting.appendleft(shard)
                        elif attempts.failed(shard.id, err, died=True):
                            _record_died(spec.store.path, shard.id, err)  # the console's one line for it
                            waiting.appendleft(shard)
                        else:
                            on_failed(shard, attempts.count(shard.id), f"{type(err).__name__}: {err}")
                    else:
                        attempts.committed()
                        on_done(record)
                watch.check()
        attempts.raise_if_storage_down(spec.store.path)


def _node_names(nodes: list[dict]) -> str:
    """Nodes as ``address (hostname)``, for a message."""
    return ", ".join(f"{n.get('NodeManagerAddress')} ({n.get('NodeManagerHostname')})" for n in nodes)


def _record_died(store: str, shard_id: int, err: BaseException) -> None:
    """Write the error of an attempt whose worker died (no worker was left to write it).

    Its worker counted the attempt when it began (``store.record_attempt``); the
    driver's tracker prints the file as the attempt's one line, and ``pipeline
    inspect --shard`` shows it, as for an attempt that raised.
    """
    from .live import write_attempt_error
    from .store import attempt_count

    write_attempt_error(store, shard_id, max(1, attempt_count(store, shard_id)), err)


class Attempts:
    """Each shard's failed attempts: whether to retry, and how many ran out of memory.

    A full disk (``is_storage_full``) is never retried and sets ``storage_full``: the executors then start
    no more shards, which would compute only to fail writing (the run ends; its committed shards are kept).

    A bucket's outage stops the run the same way (``remote``; on a local store a connection error or a
    timeout is the function's own, counted as any failure): once ``retries + 1`` attempts in a row (of any shards)
    failed with a transient storage error (``storage.is_transient``: 5xx, throttling, timeouts, refused or
    dropped connections, each already tried ``PIPELINE_STORAGE_RETRIES`` times inside the attempt), with no
    commit (``committed``) and no failure of another kind in between, ``storage_down`` holds the last error,
    no attempt is retried and no shard starts; the executor then raises ``StorageDown``. ``retries + 1`` is
    what one shard that fails on the storage costs anyway: an outage costs one shard's attempts, not every
    pending shard's (12 shards, ``retries: 1``: 2 attempts instead of 22). Every commit resets the count, so
    a worker whose own network is cut, in a cluster whose other workers write, stops nothing while any other
    worker commits a shard within the ``retries + 1`` failures it takes (each at least the storage's own
    backoff, 0.5 + 1 + 2 + 4 s with the default 5 tries).

    >>> a = Attempts(retries=1)
    >>> a.failed(7, MemoryError()), a.memory_retries(7), a.failed(7, ValueError()), a.count(7)
    (True, 1, False, 2)
    >>> a.failed(8, ConnectionResetError()), a.stopped, a.failed(9, ConnectionResetError()), a.stopped
    (True, False, False, True)
    """

    def __init__(self, retries: int, *, remote: bool = True) -> None:
        self.retries = retries
        self.remote = remote  # a bucket store, which can go down; a local disk has no outage, only a full disk
        self.storage_full = False
        self.storage_down: BaseException | None = None  # the error of the attempt that showed the outage
        self._storage_failures = 0  # attempts in a row that failed on the storage, since the last commit
        self._failures: dict[int, int] = {}
        self._memory: dict[int, int] = {}

    @property
    def stopped(self) -> bool:
        """No shard starts any more: the disk is full, or the storage is down."""
        return self.storage_full or self.storage_down is not None

    def committed(self) -> None:
        """A shard committed: the storage answers (its outage count starts again)."""
        self._storage_failures = 0

    def failed(self, shard_id: int, error: BaseException | None, *, died: bool = False) -> bool:
        """Count a failed attempt of the shard; True when it gets another one (never for ``RejectedResults``).

        ``died``: its worker died (Ray's error, not the shard's), which says nothing of the storage.
        """
        self._failures[shard_id] = self._failures.get(shard_id, 0) + 1
        if is_memory_failure(error):
            self._memory[shard_id] = self._memory.get(shard_id, 0) + 1
        if is_storage_full(error):
            self.storage_full = True
            return False
        rejected = isinstance(error, RejectedResults)  # the shard's own results, whatever its text holds
        # a worker that died, or any failure on a local store (a connection error there is the function's own),
        # says nothing of the storage
        telling = self.remote and not died
        if telling and error is not None and not rejected and is_transient(error):
            self._storage_failures += 1
            if self._storage_failures > self.retries and self.storage_down is None:
                self.storage_down = error
        elif telling:  # a failure of another kind: not a row of storage failures
            self._storage_failures = 0
        if self.storage_down is not None:
            return False  # no attempt starts any more
        return self._failures[shard_id] <= self.retries and not rejected

    def raise_if_storage_down(self, store: str) -> None:
        """Raise ``StorageDown`` for ``store`` when an outage stopped the run (the driver finalizes, then says it)."""
        if self.storage_down is not None:
            error = self.storage_down
            for _ in range(8):  # the storage's own words (s3fs's OSError(EBUSY) hides the SlowDown it came from)
                error = error.__cause__ or error
            text = str(error).strip().splitlines()
            raise StorageDown(str(store), f"{type(error).__name__}: {text[0] if text else ''}"[:300], self.retries + 1)

    def count(self, shard_id: int) -> int:
        """Attempts of the shard that failed so far."""
        return self._failures.get(shard_id, 0)

    def memory_retries(self, shard_id: int) -> int:
        """Attempts of the shard that ran out of memory: its next attempt halves blocks and chunks this often."""
        return self._memory.get(shard_id, 0)


class _Lookahead:
    """An iterator over shards that knows whether one is left (``bool``) and hands them out one by one."""

    _END = object()

    def __init__(self, items) -> None:
        self._items = iter(items)
        self._next = next(self._items, self._END)
        self._front: list = []  # shards put back, taken before the rest

    def __bool__(self) -> bool:
        return bool(self._front) or self._next is not self._END

    def pop(self):
        if self._front:
            return self._front.pop()
        item, self._next = self._next, next(self._items, self._END)
        return item

    def appendleft(self, item) -> None:
        """Put a shard back to be taken next (a retry)."""
        self._front.append(item)


def cluster_address(address: str | None) -> str:
    """The cluster to join: ``address``, else ``$RAY_ADDRESS``, else a ClusterError saying what to do."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ClusterError(
            "no Ray cluster to join: pass --local to run on this machine, or --address HOST:PORT "
            "(or set RAY_ADDRESS) to join a cluster started with `ray up cluster.yaml`"
        )
    return address


CONNECT_TIMEOUT_S = 5.0


def check_cluster(address: str, source: str = "--address") -> None:
    """Raise a ClusterError unless this process can join the cluster at ``address``: reachable, token accepted."""
    from .cluster import authenticate

    check_reachable(address, source)
    if address != "local" and ("://" not in address or address.startswith("ray://")):
        authenticate(address, source)  # token authentication: found, checked, turned on


def check_reachable(address: str, source: str = "--address", timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a ClusterError unless ``address`` (HOST:PORT or ray://HOST:PORT) answers like a Ray cluster.

    ``ray.init`` retries an unreachable address for a long time and ignores
    Ctrl-C meanwhile; this fails within ``timeout`` seconds instead, saying what
    to do. A server that answers but does not speak gRPC (a wrong port) is
    refused too, since ``ray.init`` would wait on it forever. ``auto`` and
    ``local`` (which Ray resolves on this machine) and other schemes are left
    to Ray. ``source`` names where the address came from.

    Example:
        >>> check_reachable("auto")   # nothing to check: Ray looks for a cluster on this machine
    """

    rest = address.strip().removeprefix("ray://")
    if rest in ("auto", "local") or "://" in rest:
        return
    target = host_port(address)
    if target is None:
        raise ClusterError(
            f"{source} is {address!r}, which is not HOST:PORT; use e.g. --address 10.0.0.1:6379 "
            "(a Ray head node) or ray://10.0.0.1:10001 (the Ray client), or pass --local to run on this machine"
        )
    host, port = target
    head = "ray start --head" if address.strip().startswith("ray://") else f"ray start --head --port {port}"
    try:
        speaks_grpc = _speaks_http2(host, port, timeout)
    except OSError as err:
        reason = reason_of(err)
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r} (from {source}): no answer from {host}:{port} "
            f"within {timeout:g} s ({reason}). Start the cluster first (`{head}` on "
            f"that machine, or `ray up cluster.yaml`), or correct {source}; or pass --local to run on this "
            "machine without a cluster"
        ) from None
    if not speaks_grpc:
        raise ClusterError(
            f"{host}:{port} (from {source}: {address!r}) answers, but it is not a Ray cluster (a Ray head "
            "speaks gRPC there; this server does not). Check the port: a head's address is HOST:6379 by "
            "default (`ray status` on the head prints it), ray://HOST:10001 for the Ray client; or pass "
            "--local to run on this machine without a cluster"
        )


def _speaks_http2(host: str, port: int, timeout: float) -> bool:
    """Whether the server at host:port answers an HTTP/2 preface with a SETTINGS frame (as gRPC, so Ray, does).

    Raises ``OSError`` when it cannot connect or says nothing within ``timeout``.
    """
    import socket

    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.settimeout(timeout)
        connection.sendall(preface)
        frame = b""
        while len(frame) < 9:
            chunk = connection.recv(9 - len(frame))
            if not chunk:
                break
            frame += chunk
    return len(frame) == 9 and frame[3] == 0x04  # frame header: length (3), type (1: 0x4 = SETTINGS), ...


def _format_error(err: BaseException) -> str:
    lines = traceback.format_exception_only(type(err), err)
    return "".join(lines).strip()[-2000:]


def make_executor(name: str, *, local: bool = False, address: str | None = None) -> Executor:
    """The executor called ``name`` ('ray' or 'inline')."""
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(local=local, address=address)
    raise ValueError(f"unknown executor {name!r}; use 'ray' or 'inline'")
