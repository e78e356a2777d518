"""Example user functions for jobs/user_function.yaml.

A job function maps ONE sample (no batch axis) to its output; the pipeline
vectorises and differentiates it. Any torch code works; operations the Taylor
engine does not know fall back to torch.func.
"""

import torch


def matrix_map(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """A smooth map of a 2x2 matrix to a 2x2 matrix: tanh(scale * x) @ x + exp(-x**2)."""
    return torch.tanh(scale * x) @ x + torch.exp(-(x**2))


class Oscillator(torch.nn.Module):
    """A module with constructor arguments: y = sin(w . x) * exp(-|x|^2 / 2)."""

    def __init__(self, frequency: float = 1.0, size: int = 2):
        super().__init__()
        self.w = torch.nn.Parameter(frequency * torch.arange(1.0, size + 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w @ x) * torch.exp(-0.5 * (x * x).sum())
