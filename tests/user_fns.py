"""Functions that test jobs import by path ('user_fns:...'), with python_path = tests/."""

import os

import torch


def quartic_sum(x):
    """Seed 002: (x**4).sum(), whose third derivative summed over two groups is 24 x."""
    return (x**4).sum()


def matrix_map(x, scale=1.0):
    return torch.tanh(scale * x) @ x + torch.exp(-(x**2))


def fails_off_driver(x, driver_pid=0):
    """Works in the driver process, raises in any other (a Ray worker): a shard that always fails."""
    if os.getpid() != driver_pid:
        raise RuntimeError("this worker always fails")
    return torch.sin(x).sum()


def no_credentials_off_driver(x, driver_pid=0):
    """Works in the driver, and raises botocore's NoCredentialsError on a Ray worker (a node without the keys)."""
    if os.getpid() != driver_pid:
        from botocore.exceptions import NoCredentialsError

        raise NoCredentialsError()
    return torch.sin(x).sum()


def steep(x):
    """2e5 * x0**4 + x1: small near x0 = 0, beyond float16's 65504 past x0 = 0.757 (its Jacobian past 0.434)."""
    return 2e5 * x[0] ** 4 + x[1]


class Quadratic(torch.nn.Module):
    """y = x^T A x + b . x with fixed A and b, for checkpoint tests."""

    def __init__(self, size=2):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(size, size))
        self.b = torch.nn.Parameter(torch.zeros(size))

    def forward(self, x):
        return x @ self.a @ x + self.b @ x


def sqrt_first(x):
    """sqrt of the first input coordinate: NaN where it is negative (a function with a limited domain)."""
    return torch.sqrt(x[..., :1])


def dies_once_on_a_worker(x, flag="", driver_pid=0):
    """sin(x).sum(); the first worker to find ``flag`` removes it and kills itself with SIGKILL (mid-shard)."""
    import signal

    if flag and os.getpid() != driver_pid and os.path.exists(flag):
        try:
            os.remove(flag)
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return torch.sin(x).sum()


def counted_quadratic(log="", scale=1.0):
    """A factory that notes each build (one line with its process id in ``log``): counts loads per worker."""
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")

    def fn(x):
        return scale * torch.stack([(x**2).sum(), torch.sin(x).prod()])

    return fn


SLOW_ENV = "PIPELINE_TEST_SECONDS_PER_CALL"


def slow_sin(x, seconds=None):
    """sin(x).sum(-1) after sleeping ``seconds`` per call: a job to watch while it runs.

    Without ``seconds``, $PIPELINE_TEST_SECONDS_PER_CALL (default 0): then a job started slow resumes
    fast with the same spec. (It needs a method that calls the function every time, e.g. forward;
    the Taylor engine traces it once.)
    """
    import time

    time.sleep(float(os.environ.get(SLOW_ENV, "0")) if seconds is None else seconds)
    return torch.sin(x).sum(-1, keepdim=True)


def fails_in_ray_task(x, message="this worker always fails"):
    """Works outside Ray tasks (the driver's check on two samples), raises inside one: a shard that always fails."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None:
        raise RuntimeError(message)
    return torch.sin(x).sum()
