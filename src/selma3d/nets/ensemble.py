"""Several segmentation nets as one: the mean of their foreground probabilities.

nnU-Net predicts with the average of its cross-validation models' probabilities; here the
members are the seeds of one finetuning run (same network, normalisation and data, different
initialisation and crops). :class:`ProbabilityEnsemble` returns the logit of the members' mean
sigmoid, so every consumer of a single net's logits (sliding window, test-time mirroring,
calibration, whole-volume prediction, the exported algorithm) runs an ensemble unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: probabilities are clamped to [EPS, 1 - EPS] before the logit, so it stays finite
EPS = 1e-6

#: the ``model.pt`` key that holds an ensemble's member weights (written by
#: :func:`selma3d.training.ensemble.combine`)
MEMBERS_KEY = "members"


def is_ensemble(payload: dict) -> bool:
    """Whether a loaded ``model.pt`` payload is an ensemble (member weights, no single state_dict)."""
    return MEMBERS_KEY in payload


class ProbabilityEnsemble(torch.nn.Module):
    """``logit(mean_i sigmoid(member_i(x)))`` over one-channel foreground logits."""

    def __init__(self, members: Sequence[torch.nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prob = None
        for net in self.members:
            p = torch.sigmoid(net(x).float())
            prob = p if prob is None else prob + p
        prob = (prob / len(self.members)).clamp(EPS, 1.0 - EPS)
        return torch.logit(prob)
