"""Joining a Ray cluster: addresses, token authentication, what the autoscaler can add, Ray jobs.

``runner.RayExecutor`` calls these; they hold what a user of a real cluster
trips over before the first shard runs:

- ``resolve_address``: ``auto`` (the head started on this machine), ``HOST:PORT``
  (the head's GCS port, 6379 by default) and ``ray://HOST:PORT`` (the Ray client
  server, 10001 by default).
- ``authenticate``: a head started with ``ray start`` uses token authentication
  when a token exists on it (``~/.ray/auth_token``, made by ``ray get-auth-token
  --generate`` or by any earlier ``ray.init()``). A driver joining by explicit
  address does not send a token unless told to, and Ray then retries
  ``InvalidAuthToken`` for a long time; this probes the head once (gRPC, a few
  ms), and when it asks for a token, finds one the way Ray does
  (``RAY_AUTH_TOKEN``, then the file ``RAY_AUTH_TOKEN_PATH``, then
  ``~/.ray/auth_token``), checks it, and turns on Ray's token mode for this
  process; a missing or wrong token is a one-line ``ClusterError``.
- ``node_types``: the autoscaler's node types (their resources and worker
  counts), so ``gpus_per_task`` can ask for GPUs that no node has *yet*.
- ``ray_job_working_dir`` / ``check_store_path``: inside ``ray job submit
  --working-dir``, the current directory is Ray's temporary copy of it; a
  relative ``store.path`` there is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ClusterError

AUTH_FIX = (
    "copy the head's token (`ray get-auth-token` on the head prints it) into ~/.ray/auth_token on this "
    "machine, or set RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file holding it>)"
)


def resolve_address(address: str, source: str = "--address") -> str:
    """``address`` with ``auto`` replaced by the address of the head started on this machine.

    Example:
        >>> resolve_address("ray://10.0.0.1:10001")
        'ray://10.0.0.1:10001'
    """
    if address.strip() != "auto":
        return address.strip()
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise ClusterError(
            f"{source} is 'auto' but no Ray cluster runs on this machine (none started with `ray start --head`, "
            "as far as Ray's temporary directory tells); start one with `ray start --head`, pass "
            "--address HOST:PORT of a running head, or --local to run on this machine without a cluster"
        )
    return found


def _probe(address: str, token: str | None, timeout: float):
    """The gRPC status code of one cheap call to the head (None when it answers OK), and its details."""
    import grpc

    client = address.startswith("ray://")
    target = address[len("ray://") :].rstrip("/") if client else address
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(target) as channel:
        try:
            if client:
                from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

                # protobuf's generated module makes its message classes at import time: mypy cannot see them
                request = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)  # type: ignore[attr-defined]
                ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                    request,
                    timeout=timeout,
                    metadata=metadata,
                )
            else:
                from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

                # protobuf's generated module makes its message classes at import time: mypy cannot see them
                request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]
                gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                    request, timeout=timeout, metadata=metadata
                )
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
    return None, ""


def local_token() -> tuple[str | None, str]:
    """The token Ray would send from this machine, and where it comes from (for messages)."""
    try:
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # missing from ray's _raylet.pyi
    except ImportError:  # a Ray without token authentication
        return None, ""
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment may have changed since (tests, a long-lived process)
    if not loader.has_token(ignore_auth_mode=True):
        return None, ""
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        where = f"the file {os.environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    else:
        where = "~/.ray/auth_token"
    return loader.get_raw_token(ignore_auth_mode=True), where


def _enable_token_mode() -> None:
    """Make this process (and the Ray it joins) send the token: what ``RAY_AUTH_MODE=token`` does."""
    from ray._private.authentication import authentication_token_setup

    authentication_token_setup._enable_token_auth()


def authenticate(address: str, source: str = "--address", timeout: float = 5.0) -> None:
    """Raise a ClusterError unless this process can talk to the Ray head at ``address``.

    ``address`` is ``HOST:PORT`` (the GCS) or ``ray://HOST:PORT`` (the client
    server) and already accepts connections (``runner.check_reachable``). When
    the head asks for a token and this machine has the right one, Ray's token
    mode is turned on for this process; a missing or wrong token, and a port
    that answers gRPC but is not that Ray service, are refused with the fix.
    """
    import grpc

    client = address.startswith("ray://")
    code, details = _probe(address, None, timeout)
    if code is None:
        return
    if code == grpc.StatusCode.UNAUTHENTICATED:
        token, where = local_token()
        if token is None:
            raise ClusterError(
                f"the Ray cluster at {address!r} (from {source}) uses token authentication and this machine "
                f"has no token: {AUTH_FIX}"
            )
        code, details = _probe(address, token, timeout)
        if code is None:
            _enable_token_mode()
            return
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise ClusterError(
                f"the Ray cluster at {address!r} (from {source}) refuses the authentication token from {where}: "
                f"it is not the head's token; {AUTH_FIX}"
            )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        if client:
            raise ClusterError(
                f"{address!r} (from {source}) is a Ray port but not the Ray client server: the client server is "
                "ray://HEAD:10001 (`ray start --head --ray-client-server-port 10001`); the head's own port "
                "(6379 by default) is given without ray://, e.g. --address HEAD:6379"
            )
        raise ClusterError(
            f"{address!r} (from {source}) is a Ray port but not a Ray head's address (the GCS port, 6379 by "
            "default: `ray status` on the head prints it); for the Ray client server use ray://HEAD:10001"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise ClusterError(
            f"the Ray cluster at {address!r} (from {source}) accepts connections but did not answer within "
            f"{timeout:g} s; check that the head is healthy (`ray status` on it) or correct {source}"
        )
    raise ClusterError(
        f"{address!r} (from {source}) answers, but not as a Ray cluster ({code.name}: {details}); "
        "a head's address is HOST:6379 by default (`ray status` on the head prints it), ray://HOST:10001 for "
        "the Ray client; or pass --local to run on this machine without a cluster"
    )


# ------------------------------------------------------------------ what the autoscaler can add


def node_types() -> dict[str, dict]:
    """The autoscaler's node types of the joined cluster: ``{name: {"resources", "min_workers", "max_workers"}}``.

    Empty when the cluster has no autoscaler (a plain ``ray start`` cluster,
    a local Ray). Read from the cluster config the autoscaler reports to the
    GCS when it does (autoscaler v2, KubeRay), else from the autoscaling config
    file of the head's autoscaler (``ray up`` and ``ray start
    --autoscaling-config`` heads), by a tiny task on the head node.
    """
    import ray

    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        config = None
    if config is not None and config.node_group_configs:
        return {
            group.name: {
                "resources": dict(group.resources),
                "min_workers": group.min_count,
                "max_workers": group.max_count,
            }
            for group in config.node_group_configs
        }
    gcs = ray.get_runtime_context().gcs_address
    if _on_head(gcs):  # the driver runs on the head (a local Ray, `auto`, a Ray job): no task needed
        return _head_node_types(gcs)
    try:
        return ray.get(
            ray.remote(_head_node_types).options(num_cpus=0, resources={"node:__internal_head__": 0.001}).remote(gcs),
            timeout=60,
        )
    except Exception:
        return {}


def _on_head(gcs_address: str) -> bool:
    """Whether this process runs on the node of the cluster's GCS (the head)."""
    import ray

    try:
        return gcs_address.rpartition(":")[0].strip("[]") in {ray.util.get_node_ip_address(), "127.0.0.1", "localhost"}
    except Exception:
        return False


def _head_node_types(gcs_address: str) -> dict[str, dict]:
    """On the head: the node types of the autoscaling config the autoscaler of ``gcs_address`` runs with."""
    import yaml

    port = gcs_address.rpartition(":")[2]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(arg.endswith("monitor.py") for arg in argv):
            continue
        config = gcs = None
        for i, arg in enumerate(argv):
            for flag in ("--autoscaling-config", "--gcs-address"):
                value = (
                    arg.partition("=")[2]
                    if arg.startswith(flag + "=")
                    else (argv[i + 1] if arg == flag and i + 1 < len(argv) else None)
                )
                if value is not None:
                    if flag == "--gcs-address":
                        gcs = value
                    else:
                        config = value
        if not config or not gcs or gcs.rpartition(":")[2] != port:
            continue
        try:
            data = yaml.safe_load(Path(os.path.expanduser(config)).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}
        head = data.get("head_node_type")
        return {
            name: {
                "resources": dict(node.get("resources") or {}),
                "min_workers": int(node.get("min_workers", 0) or 0),
                "max_workers": 0 if name == head else int(node.get("max_workers", data.get("max_workers", 0)) or 0),
            }
            for name, node in (data.get("available_node_types") or {}).items()
        }
    return {}


def gpu_node_types(types: dict[str, dict]) -> dict[str, dict]:
    """The node types the autoscaler can start that have GPUs."""
    return {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0 and t["max_workers"] != 0}


def describe_node_types(types: dict[str, dict]) -> str:
    """e.g. ``gpu_worker (GPU 1, CPU 4; 0 to 8 workers)``, for messages."""
    if not types:
        return "no autoscaler node types"
    parts = []
    for name, t in types.items():
        res = ", ".join(f"{k} {v:g}" for k, v in sorted(t["resources"].items())) or "no declared resources"
        parts.append(f"{name} ({res}; {t['min_workers']} to {t['max_workers']} workers)")
    return "node types " + ", ".join(parts)


# ------------------------------------------------------------------ Ray jobs (`ray job submit`)


def ray_job_working_dir() -> str | None:
    """When this process is a Ray job's entrypoint with a ``--working-dir``: the directory Ray copied it to."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw is None:
        return None
    try:
        runtime_env = (json.loads(raw) or {}).get("runtime_env") or {}
    except (ValueError, AttributeError):
        runtime_env = {}
    cwd = os.getcwd()
    if runtime_env.get("working_dir") or "runtime_resources" in Path(cwd).parts:
        return cwd
    return None


def ray_job() -> dict | None:
    """The Ray job this process is the entrypoint of (``ray job submit``), or None.

    ``{"submission_id", "working_dir"}``: the job's id (``ray job logs ID``) and the package
    Ray made of ``--working-dir`` (``gcs://_ray_pkg_<hash>.zip``, the hash of its files;
    None without one). A store's provenance records it: in a Ray job the job file is Ray's
    temporary copy, which has no ``.git`` (Ray leaves it out), so no git commit is found.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw is None:
        return None
    try:
        config = json.loads(raw) or {}
        metadata, runtime_env = config.get("metadata") or {}, config.get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return {"submission_id": metadata.get("job_submission_id"), "working_dir": runtime_env.get("working_dir")}


def check_store_path(path) -> None:
    """Refuse a ``store.path`` inside a Ray job's temporary working dir (the results would vanish with it).

    ``load_spec`` makes a relative ``store.path`` absolute against the current
    directory, which in ``ray job submit --working-dir`` is Ray's temporary copy.

    Example:
        >>> check_store_path("/shared/results/sweep.zarr")   # outside any Ray job's working dir: fine
    """
    text = str(path)
    if "://" in text:
        return
    working_dir = ray_job_working_dir()
    if working_dir is None:
        return
    target, base = Path(text).absolute(), Path(working_dir).absolute()
    if target != base and base not in target.parents:
        return
    from .spec import SpecError

    shown = target.relative_to(base)
    raise SpecError(
        [
            f"store.path: {shown} is relative, and this runs as a Ray job (`ray job submit --working-dir`) whose "
            f"current directory is Ray's temporary copy of the working dir ({working_dir}), deleted after the job: "
            f"nobody would find the store there. Use an absolute path on a filesystem every node sees, e.g. "
            f"--set store.path=/shared/{target.name} (or a storage URL)"
        ]
    )


# ------------------------------------------------------------------ where a shard ran (manifest host/device)


def placement() -> tuple[str, str]:
    """(node, accelerators) of the Ray worker running this code: ``("ray node <node id>", "GPU 0")``.

    Several Ray nodes may share one host (and a fake GPU of Ray's test
    autoscaler has no CUDA), so the manifest's device column carries
    the Ray node id and the GPU ids Ray assigned beside the torch device:
    ``cpu (ray node <id>, GPU 0)``. Empty strings outside a Ray worker (inline executor).
    """
    import sys

    if "ray" not in sys.modules:
        return "", ""
    import ray

    if not ray.is_initialized():
        return "", ""
    try:
        context = ray.get_runtime_context()
        node = f"ray node {context.get_node_id()}"
        gpus = context.get_accelerator_ids().get("GPU") or []
    except Exception:
        return "", ""
    return node, (f"GPU {','.join(map(str, gpus))}" if gpus else "")
