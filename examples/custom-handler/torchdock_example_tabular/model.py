"""The model: a small MLP over standardised features, returning a risk logit per row.

Trained elsewhere in real life; here its weights are fixed by a seed, so that the example and
its test agree on every number.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURES = ["age", "income", "debt_ratio"]


class RiskModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(len(FEATURES), 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logit: torch.Tensor = self.net(features).squeeze(1)
        return logit


def make() -> RiskModel:
    torch.manual_seed(7)
    return RiskModel().eval()
