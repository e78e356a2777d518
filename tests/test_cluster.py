"""The cluster path on a real multi-process Ray: a `ray start` head with token authentication and two workers.

One cluster for the module (a head of 1 CPU plus two workers of 1 CPU, on
ports and a temp dir of their own); drivers are `python -m pipeline`
subprocesses, as a user runs them. Joining by HOST:PORT, ray://, RAY_ADDRESS
and `auto`; the one-line refusals (no token, wrong token, nothing listening, a
port that is not the head's); `ray job submit`; shards spread over the nodes,
one node removed mid-run, arrays bit-identical to a one-node run; last, the
head killed under a running driver: one line naming the address and the
committed shards, exit 1, the same store resumed to a bit-identical result.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rayheads import RAY, free_port, start_cluster

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "jobs/quickstart.yaml")
SMALL = ["--set", "inputs.n=2048", "--set", "quantities=[value, jacobian]"]


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=1, workers=[1, 1])
    yield cluster
    cluster.stop()


def pipeline(cluster, *args, env=None, cwd=None, timeout=240) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in the cluster's environment; on a timeout, fail with where it hung."""
    command = [sys.executable, "-X", "faulthandler", "-m", "pipeline", *map(str, args)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**cluster.env, **(env or {})},
        cwd=cwd or ROOT,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        out, err = process.communicate()
        pytest.fail(f"{' '.join(command)} ran over {timeout} s:\n{err[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def in_parallel(*calls, at_once: int = 4):
    with ThreadPoolExecutor(min(len(calls), at_once)) as pool:
        return list(pool.map(lambda call: call(), calls))


def client_server_logs(cluster) -> str:
    """The head's Ray Client server logs (why a ray:// join was refused), last lines of each."""
    logs = sorted((cluster.base / "ray" / "session_latest" / "logs").glob("ray_client_server*"))
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]) for log in logs
    )


def test_every_address_form_joins_the_cluster(cluster, tmp_path):
    """HOST:PORT, ray://HOST:PORT, RAY_ADDRESS and auto, token authentication included (all found, no flags)."""
    forms = {
        "gcs": (["--address", cluster.address], {}),
        "client": (["--address", f"ray://127.0.0.1:{cluster.client_port}"], {}),
        "env": ([], {"RAY_ADDRESS": cluster.address}),
        "auto": (["--address", "auto"], {}),  # TMPDIR=<base>: Ray finds <base>/ray/ray_current_cluster
    }
    # the driver's environment has the token but not RAY_AUTH_MODE: pipeline turns token mode on itself
    results = in_parallel(
        *(
            (
                lambda args=args, env=env, name=name: pipeline(
                    cluster,
                    "submit",
                    QUICK,
                    *args,
                    "--set",
                    f"store.path={tmp_path / name}.zarr",
                    *SMALL,
                    env={"RAY_AUTH_MODE": "", **env},
                )
            )
            for name, (args, env) in forms.items()
        )
    )
    for name, result in zip(forms, results):
        assert result.returncode == 0, (name, result.stderr[-3000:], client_server_logs(cluster))
        assert "executor: ray (3 CPUs, 0 GPUs, 3 nodes)" in result.stderr, (name, result.stderr[-2000:])
        assert "seen by the nodes" not in result.stderr, name  # every node on the driver's host: no probe
        assert f"complete: {tmp_path / name}.zarr" in result.stdout


def refusals(cluster, tmp_path) -> dict:
    """name: (address, environment, words the one line must hold)."""
    return {
        "no token": (
            cluster.address,
            {"RAY_AUTH_TOKEN": "", "HOME": str(tmp_path), "RAY_AUTH_MODE": ""},
            ["uses token authentication", "no token", "ray get-auth-token", "RAY_AUTH_TOKEN"],
        ),
        "wrong token": (
            cluster.address,
            {"RAY_AUTH_TOKEN": "not-the-token"},
            ["refuses the authentication token from RAY_AUTH_TOKEN", "ray get-auth-token"],
        ),
        "client, wrong token": (
            f"ray://127.0.0.1:{cluster.client_port}",
            {"RAY_AUTH_TOKEN": "not-the-token"},
            ["refuses the authentication token", "~/.ray/auth_token"],
        ),
        "refused": (f"127.0.0.1:{free_port()}", {}, ["cannot reach", "Connection refused", "ray start --head"]),
        "client port without ray://": (
            f"127.0.0.1:{cluster.client_port}",
            {},
            ["not a Ray head's address", "ray://HEAD:10001"],
        ),
        "head port with ray://": (f"ray://{cluster.address}", {}, ["not the Ray client server", "HEAD:6379"]),
        "dashboard port": (f"127.0.0.1:{cluster.dashboard_port}", {}, ["not a Ray cluster", "HOST:6379"]),
    }


def test_refusals_are_one_line_with_the_fix_and_exit_2(cluster, tmp_path):
    cases = refusals(cluster, tmp_path)
    stores = [tmp_path / f"never{i}.zarr" for i in range(len(cases))]
    results = in_parallel(
        *(
            (
                lambda a=a, e=e, s=s: pipeline(
                    cluster, "submit", QUICK, "--address", a, "--set", f"store.path={s}", *SMALL, env=e, timeout=120
                )
            )
            for (a, e, _), s in zip(cases.values(), stores)
        ),
        at_once=3,
    )
    for (name, (_, _, words)), result in zip(cases.items(), results):
        assert result.returncode == 2, (name, result.stderr[-2000:])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr[-2000:])
        for word in words:
            assert word in lines[0], (name, word, lines[0])
    assert not any(store.exists() for store in stores)


def test_refusals_are_decided_in_under_10_s(cluster, tmp_path, monkeypatch):
    """What `submit` does before `ray.init` (which would retry for minutes), timed in this process."""
    from ray._raylet import AuthenticationTokenLoader

    from pipeline.cluster import authenticate
    from pipeline.runner import ClusterError, check_reachable

    try:
        for name, (address, env, words) in refusals(cluster, tmp_path).items():
            with monkeypatch.context() as patch:
                for key, value in env.items():
                    patch.setenv(key, value)
                begin = time.monotonic()
                with pytest.raises(ClusterError) as refused:
                    check_reachable(address)
                    authenticate(address)
                assert time.monotonic() - begin < 10, name
                assert all(word in str(refused.value) for word in words), (name, str(refused.value))
    finally:
        # Ray's token loader is one per process and caches what it read under the patched
        # environment (token mode, a token): left so, this process's own Ray (the suite's
        # ray_cluster) stops accepting its raylet's calls and the next Ray test exits pytest
        AuthenticationTokenLoader.instance().reset_cache()


def test_a_repair_the_cluster_would_refuse_un_commits_nothing(cluster, tmp_path):
    """`verify --repair --address` with no token or a wrong one stops before it changes the store.

    (It checked only that the port answered, un-committed the damaged shard, cleared 'complete', then
    stopped at the token.)
    """
    from pipeline.store import read_markers, summarize

    store = tmp_path / "damaged.zarr"
    made = pipeline(cluster, "submit", QUICK, "--executor", "inline", "-q", "--set", f"store.path={store}", *SMALL)
    assert made.returncode == 0, made.stderr
    with open(store / "value" / "c" / "0" / "0", "ab") as chunk:
        chunk.write(b"garbage")
    committed = sorted(read_markers(store))
    for name in ("no token", "wrong token"):
        address, env, words = refusals(cluster, tmp_path)[name]
        run = pipeline(cluster, "verify", store, "--repair", "--address", address, "-q", env=env, timeout=120)
        assert run.returncode == 2 and "un-committed" not in run.stderr, (name, run.stderr[-2000:])
        assert all(word in run.stderr for word in words), (name, run.stderr[-2000:])
        assert sorted(read_markers(store)) == committed and summarize(store)["complete"], name


def test_gpus_the_cluster_can_never_offer_are_refused(cluster, tmp_path):
    result = pipeline(
        cluster,
        "submit",
        QUICK,
        "--address",
        cluster.address,
        "--set",
        "execution.gpus_per_task=1",
        "--set",
        f"store.path={tmp_path / 'g.zarr'}",
        *SMALL,
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for word in ("execution.gpus_per_task is 1", "has 0 GPUs", "no autoscaler node types", "gpus_per_task: auto"):
        assert word in line, word
    assert not (tmp_path / "g.zarr").exists()


def test_ray_job_submit_runs_a_sweep_and_refuses_a_store_in_its_temporary_dir(cluster, tmp_path):
    """`ray job submit --working-dir . -- pipeline submit jobs/sweep.yaml`, as the README shows."""
    sweep = [
        "--set",
        "sweep.axes.T0_mean.num=2",
        "--set",
        "sweep.axes.sigma_mean.num=2",
        "--set",
        "sweep.axes.sigma_mean.high=1.0",
        "--set",
        "solver.options.nx=40",
        "--set",
        "store.chunk_size=2",
        "--set",
        "execution.shard_size=4",
    ]
    store = tmp_path / "sweep.zarr"

    def job(*args):
        return subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{cluster.dashboard_port}",
                "--working-dir",
                ".",
                "--",
                "pipeline",
                "submit",
                "jobs/sweep.yaml",
                *sweep,
                *args,
            ],
            capture_output=True,
            text=True,
            env=cluster.env,
            cwd=ROOT,
            timeout=240,
        )

    # one after the other: jobs of one working dir share Ray's copy of it, deleted when a job ends
    good = job("--set", f"store.path={store}")
    relative = job()
    assert "succeeded" in good.stdout + good.stderr, (good.stdout + good.stderr)[-4000:]
    assert f"complete: {store}" in good.stdout  # the job's output, streamed back as `ray job logs` shows it
    import pipeline as pl

    ds = pl.open_results(store)
    assert ds.attrs["complete"] and ds.T.shape[0] == 8
    # Ray's copy of the working dir has no .git, and is deleted after the job: the provenance names
    # the job, its working-dir package (a hash of the files) and the job file's path within it
    provenance = ds.attrs["provenance"]
    submission = re.search(r"Job '(raysubmit_\w+)' submitted", good.stdout + good.stderr)[1]
    assert provenance["ray_job"]["submission_id"] == submission, provenance
    assert re.fullmatch(r"gcs://_ray_pkg_[0-9a-f]+\.zip", provenance["ray_job"]["working_dir"]), provenance
    assert provenance["job_file"] == "jobs/sweep.yaml" and provenance["git"] is None, provenance
    assert "failed" in relative.stdout + relative.stderr
    assert "store.path: results/sweep.zarr is relative, and this runs as a Ray job" in relative.stdout
    assert "Use an absolute path on a filesystem every node sees" in relative.stdout


def _arrays(path) -> dict:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def test_shards_spread_over_the_nodes_and_survive_a_node_removed_mid_run(cluster, tmp_path):
    """Next to last in the module: it takes a worker away. The arrays equal a one-node (inline) run bit for bit."""
    from pipeline.driver import submit
    from pipeline.runner import InlineExecutor
    from pipeline.spec import load_spec

    overrides = ["inputs.n=20480", "store.chunk_size=1024", "execution.shard_size=1024", "quantities=[value, hessian]"]
    store = tmp_path / "multi.zarr"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "submit",
            QUICK,
            "--address",
            cluster.address,
            "-q",
            *(a for o in overrides + [f"store.path={store}"] for a in ("--set", o)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env,
        cwd=ROOT,
    )
    one_node = tmp_path / "one.zarr"
    submit(load_spec(QUICK, overrides + [f"store.path={one_node}"]), InlineExecutor())  # meanwhile
    deadline = time.monotonic() + 120
    while not (store / "_shards").is_dir() or len(list((store / "_shards").iterdir())) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    # a node goes away mid-run (its raylet killed, as the OOM killer or a crash would; its agents see it
    # die and publish Ray's error): its running shards are retried
    raylet = raylet_of(cluster.workers[-1])
    os.kill(raylet, signal.SIGKILL)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    # Ray's own report of the dead raylet (its last 20 log lines of "[state-dump]", printed twice, saying
    # "Termination is unexpected") is one line of ours; -v shows Ray's
    assert "[state-dump]" not in out + err and "Raylet is terminated" not in out + err, (out + err)[-3000:]
    assert out.count("a Ray node left the cluster") <= 1, out
    manifest = pq.read_table(store / "manifest.parquet").to_pydict()
    assert set(manifest["status"]) == {"done"}
    nodes = {device.partition("(ray node ")[2] for device in manifest["device"]}
    assert len(nodes) >= 2, manifest["device"]  # spread over the nodes, as the manifest records
    expected, got = _arrays(one_node), _arrays(store)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        assert got[name].tobytes() == expected[name].tobytes(), name


def raylet_of(group: int) -> int:
    """The pid of the raylet in a `ray start` node's process group."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == group:
                if b"raylet/raylet" in (proc / "cmdline").read_bytes():
                    return int(proc.name)
        except (OSError, ProcessLookupError):
            pass
    raise AssertionError(f"no raylet in process group {group}")


def test_the_executor_line_counts_only_the_nodes_alive(monkeypatch):
    """A node that left the cluster stays in ``ray.nodes()``, marked dead: not counted (it said '2 nodes' of 1)."""
    import ray

    from pipeline.runner import RayExecutor

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": False}])
    assert RayExecutor().describe() == "ray (1 CPUs, 0 GPUs, 1 nodes)"


def test_a_lost_head_ends_the_driver_with_exit_1_and_the_store_resumes(cluster, tmp_path):
    """Last in the module: it kills the head under a running driver (its process group: GCS, raylet, all).

    Ray alone would block, then end the driver a minute later without a word. The driver says it lost the
    cluster at that address and how many shards are committed, exits 1 within $PIPELINE_CLUSTER_LOST_S
    plus its finalize, and leaves no lock; the store resumes (here inline: the cluster is gone) to arrays
    bit-identical to a clean run.
    """
    import json
    import re

    from pipeline.driver import submit
    from pipeline.runner import InlineExecutor
    from pipeline.spec import load_spec

    lost_s = 5
    store, job = tmp_path / "lost.zarr", tmp_path / "lost.yaml"
    job.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "name": "lost",
                "function": {
                    "kind": "import",
                    "target": "user_fns:slow_sin",
                    "python_path": [str(ROOT / "tests")],
                    "kwargs": {"seconds": 0.25},
                },  # a job to kill the head under
                "inputs": {"kind": "uniform", "n": 48, "shape": [2], "seed": 3},
                "quantities": ["value", "jacobian"],
                "derivatives": {"method": "forward", "dtype": "float64"},
                "store": {"path": str(store), "chunk_size": 4},
                "execution": {"shard_size": 4, "retries": 1},
            }
        )
    )

    def committed() -> int:
        return len(list((store / "_shards").glob("*.json"))) if (store / "_shards").is_dir() else 0

    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "submit", str(job), "--address", cluster.address],
        env={**cluster.env, "PIPELINE_CLUSTER_LOST_S": str(lost_s)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while committed() < 2:
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0][-4000:]
        time.sleep(0.2)
    cluster.kill_group(cluster.groups[0])  # the head machine goes
    killed = time.monotonic()
    try:
        out, _ = driver.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        driver.kill()
        pytest.fail(f"the driver did not end within 120 s of losing the head:\n{driver.communicate()[0][-4000:]}")
    took = time.monotonic() - killed
    assert driver.returncode == 1, out[-4000:]
    assert took < lost_s + 30, (took, out[-2000:])
    lines = [line for line in out.splitlines() if "lost the Ray cluster" in line]
    assert len(lines) == 1 and "Traceback" not in out, out[-4000:]
    # the count is the finalized manifest's (a worker of the surviving node may still commit one after it)
    manifest = pq.read_table(store / "manifest.parquet").to_pydict()
    done = manifest["status"].count("done")
    assert 2 <= done <= committed() < 12
    assert f"lost the Ray cluster at {cluster.address} (no answer for" in lines[0]
    assert f"{done} of 12 shards are committed and kept; run the same command again to resume" in lines[0]
    assert not Path(f"{store}.lock").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "pipeline", "submit", str(job), "--executor", "inline"],
        env=cluster.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    skipped = re.search(r"resumed: (\d+) shards? (?:was|were) already committed", resumed.stdout + resumed.stderr)
    assert skipped and int(skipped.group(1)) >= done, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    clean = tmp_path / "clean.zarr"
    submit(load_spec(str(job), [f"store.path={clean}"]), InlineExecutor())
    expected, got = _arrays(clean), _arrays(store)
    for name in ("value", "jacobian"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        assert got[name].tobytes() == expected[name].tobytes(), name


def test_the_dead_raylet_filter_passes_every_other_message_and_survives_another_rays_layout(monkeypatch):
    """``quiet_node_deaths`` wraps a private Ray printer: other messages pass as they are, and without it nothing breaks."""
    import ray._private.worker as ray_worker

    from pipeline.runner import NODE_LEFT, quiet_node_deaths

    printed: list[tuple] = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda *args, **kwargs: printed.append((args, kwargs)))
    notes: list[str] = []
    quiet_node_deaths(notes.append)
    death = {"pid": "raylet", "lines": ["Raylet is terminated. Termination is unexpected.", "[state-dump] ..."]}
    ray_worker.print_to_stdstream(death, False)
    ray_worker.print_to_stdstream(dict(death), ignore_prefix=False)  # the same report from the node's other agent
    other = {"pid": 1234, "lines": ["a worker's own print"]}
    ray_worker.print_to_stdstream(other, ignore_prefix=True)  # a keyword, as another Ray may call it
    assert notes == [NODE_LEFT] and printed == [((other,), {"ignore_prefix": True})]
    monkeypatch.delattr(ray_worker, "print_to_stdstream")  # a Ray without the private printer: nothing to wrap
    quiet_node_deaths(notes.append)
