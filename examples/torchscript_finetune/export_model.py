#!/usr/bin/env python3
"""Exports the TorchScript module that examples/torchscript_finetune fine-tunes in C++: a small
residual MLP classifier written in Python (any scripted or traced module works the same way).
Usage: .venv/bin/python examples/torchscript_finetune/export_model.py OUT.pt
The committed copy, tests/fixtures/residual_mlp.pt, was made by this script (seed 0).
"""
import sys

import torch
from torch import nn


class ResidualMLP(nn.Module):
    def __init__(self, inputs: int = 2, hidden: int = 32, classes: int = 2):
        super().__init__()
        self.embed = nn.Linear(inputs, hidden)
        self.block = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x))
        return self.head(h + self.block(h))


if __name__ == "__main__":
    torch.manual_seed(0)
    module = torch.jit.script(ResidualMLP())
    module.save(sys.argv[1] if len(sys.argv) > 1 else "residual_mlp.pt")
