"""The training loss: label-smoothed cross-entropy over the target vocabulary, summed.

``sequence_loss`` reads logits (B, T, V). ``output_layer_loss`` is the same number computed
from the output layer's inputs, for the CPU: on a 2,000-token batch and an 8,000-token
vocabulary the logits, their fp32 copy, the log-probabilities and their gradient are 64 MB
each, and the passes over them (log-softmax forward and backward, casts, fills) took a quarter
of a bf16 training step, bound by memory bandwidth. Here the logits are made a slice of rows at
a time, small enough to stay in cache, and each slice's loss and gradient come out of one pass
(the gradient of the loss with respect to the logits, ``softmax - smoothed target``, is known
in the forward pass). Only the gradient, in the products' dtype, is kept for backward.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# Elements of fp32 logits per slice: 4 MiB, in cache (this 2-core machine has 32 MiB of L3;
# slices of 1 MiB measured no faster, and below a hundred rows the products lose speed).
SLICE_ELEMENTS = 2 ** 20


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy over non-padding target tokens: logits (B, T, V), targets (B, T).

    Summed, not averaged: the trainer divides by the real target tokens of the whole global
    batch, so a batch split over processes gives the same loss as one process."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing, reduction="sum")


def output_layer_loss(features: torch.Tensor, output: nn.Linear, targets: torch.Tensor, pad_id: int,
                      label_smoothing: float = 0.0, rows_per_slice: Optional[int] = None) -> torch.Tensor:
    """``sequence_loss(output(features), targets, ...)`` without holding the logits: features
    (B, T, F), targets (B, T); ``output`` is the vocabulary layer, with its bias.

    The products run in the features' dtype (bf16 under bf16 autocast, where the pre-output
    layer makes them), the softmax in fp32."""
    vocab_size = output.out_features
    kept = (targets.reshape(-1) != pad_id).nonzero().squeeze(1)  # padding positions never reach the output layer
    features = features.reshape(-1, features.size(-1)).index_select(0, kept)  # (N, F), N real target tokens
    rows = rows_per_slice or max(1, SLICE_ELEMENTS // vocab_size)
    with torch.autocast(features.device.type, enabled=False):
        return _OutputLayerLoss.apply(features, output.weight, output.bias, targets.reshape(-1)[kept], label_smoothing,
                                      rows, torch.is_grad_enabled())


class _OutputLayerLoss(torch.autograd.Function):
    """Summed label-smoothed cross-entropy of ``features @ weight.T + bias`` (N, V) against
    ``targets`` (N), every target real; products in ``features``' dtype."""

    @staticmethod
    def forward(ctx, features, weight, bias, targets, label_smoothing: float, rows: int, grad_enabled: bool):
        dtype, (count, vocab_size) = features.dtype, (features.size(0), weight.size(0))
        weight_t, bias = weight.to(dtype).t(), bias.to(dtype)  # (F, V), (V,)
        gradients = grad_enabled and any(ctx.needs_input_grad[:3])  # not for a dev loss
        logits_grad = features.new_empty(count, vocab_size) if gradients else None  # (N, V)
        bias_grad = torch.zeros(vocab_size, device=features.device) if gradients else None
        loss = torch.zeros((), device=features.device)
        # With smoothing e the target distribution is 1 - e on the gold token plus e / V on
        # every token: loss = logsumexp(z) - (1 - e) z_gold - (e / V) sum(z), and its gradient
        # with respect to z is softmax(z) - (1 - e) onehot - e / V.
        for start in range(0, count, rows):
            gold = targets[start:start + rows].unsqueeze(1)  # (n, 1)
            logits = torch.addmm(bias, features[start:start + rows], weight_t).float()  # (n, V)
            gold_logits, logits_sum = logits.gather(1, gold).squeeze(1), logits.sum(1)
            peak = logits.amax(1, keepdim=True)
            probabilities = logits.sub_(peak).exp_()  # unnormalized, in place of the fp32 logits
            total = probabilities.sum(1, keepdim=True)
            log_normalizer = (peak + total.log()).squeeze(1)
            loss += (log_normalizer - (1 - label_smoothing) * gold_logits
                     - (label_smoothing / vocab_size) * logits_sum).sum()
            if gradients:
                probabilities.div_(total).sub_(label_smoothing / vocab_size)
                probabilities.scatter_add_(1, gold, probabilities.new_full(gold.shape, label_smoothing - 1))
                bias_grad += probabilities.sum(0)
                logits_grad[start:start + rows] = probabilities
        if gradients:
            ctx.save_for_backward(logits_grad, features, weight_t, bias_grad)
        return loss

    @staticmethod
    def backward(ctx, loss_grad):
        logits_grad, features, weight_t, bias_grad = ctx.saved_tensors
        features_grad = (logits_grad @ weight_t.t()) * loss_grad.to(logits_grad.dtype)  # (N, F)
        weight_grad = (logits_grad.t() @ features).float() * loss_grad  # (V, F)
        return features_grad, weight_grad, bias_grad * loss_grad, None, None, None, None
