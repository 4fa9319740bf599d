"""Losses of the multi-task network: Dice + cross-entropy, BCE on response, Cox partial
likelihood."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (batch Dice over the foreground, as nnU-Net) plus binary cross-entropy."""
    prob = torch.sigmoid(logits)
    dims = tuple(range(logits.ndim))
    intersection = (prob * target).sum(dim=dims)
    denominator = prob.sum(dim=dims) + target.sum(dim=dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return (1 - dice) + F.binary_cross_entropy_with_logits(logits, target)


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Dice + CE at each resolution against the max-pooled target; weights 1, 1/2, 1/4 ...,
    normalised."""
    weights = torch.tensor([0.5**i for i in range(len(outputs))])
    # Plain numbers (the same float32 values): no small tensor copied to the device per level.
    weights = (weights / weights.sum()).tolist()
    total = torch.zeros((), device=target.device)
    for w, out in zip(weights, outputs, strict=False):
        factor = [t // o for t, o in zip(target.shape[2:], out.shape[2:], strict=False)]
        tgt = target if all(f == 1 for f in factor) else F.max_pool3d(target, factor, factor)
        total = total + w * dice_ce_loss(out, tgt)
    return total


def response_loss(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE over the patients whose response is known (label NaN = unknown)."""
    known = ~torch.isnan(label)
    if not known.any():
        return logit.sum() * 0.0  # keeps the graph: a batch without labels adds nothing
    return F.binary_cross_entropy_with_logits(logit[known], label[known])


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Efron's handling of tied event times, per event.

    For each distinct event time t with d tied events D and risk set R (time >= t):
    log L_t = sum_{i in D} r_i - sum_{l=0}^{d-1} log( sum_{R} e^r - (l/d) sum_{D} e^r ).
    Censoring: censored patients only enter risk sets. Returns 0 (still differentiable) when the
    batch has no event.
    Computed in float64 with a max-shift for stability.
    """
    dtype = risk.dtype
    risk = risk.double().reshape(-1)
    time = time.double().reshape(-1)
    event = event.double().reshape(-1)
    known = ~(torch.isnan(time) | torch.isnan(event))  # a patient without survival data
    risk, time, event = risk[known], time[known], event[known]
    n_events = event.sum()
    if n_events < 1:
        return (risk.sum() * 0.0).to(dtype)  # keeps the graph: no event, no information
    shift = risk.max().detach()
    exp_r = torch.exp(risk - shift)
    event_times = torch.unique(time[event > 0])
    total = torch.zeros((), device=risk.device, dtype=torch.float64)
    for t in event_times:
        at_risk = time >= t
        tied = (time == t) & (event > 0)
        d = int(tied.sum())
        sum_risk = exp_r[at_risk].sum()
        sum_tied = exp_r[tied].sum()
        ls = torch.arange(d, device=risk.device, dtype=torch.float64) / d
        log_terms = torch.log(sum_risk - ls * sum_tied) + shift
        total = total + risk[tied].sum() - log_terms.sum()
    return (-total / n_events).to(dtype)


def partial_log_likelihood(risk, time, event) -> float:
    """The (Efron) partial log-likelihood as a float, for tests and reporting."""
    r = torch.as_tensor(risk, dtype=torch.float64)
    n_events = float(torch.as_tensor(event, dtype=torch.float64).sum())
    return -float(cox_loss(r, torch.as_tensor(time), torch.as_tensor(event))) * n_events
