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


def counted_quadratic(log="", scale=1.0):
    """A factory that notes each build (one line with its process id in ``log``): counts loads per worker."""
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")

    def fn(x):
        return scale * torch.stack([(x**2).sum(), torch.sin(x).prod()])

    return fn
