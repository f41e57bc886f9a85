"""The PyTorch training step: one function that ``twinbench train`` and the parity trajectory both run.

Keras' ``train_step`` for the seed's compile, in torch: forward in training mode, Keras' loss
(``sparse_categorical_crossentropy``), backward, the optimizer's step. Mirror: Keras'
``Model.train_step`` (``tf_impl.train`` and ``tf_impl.probes`` both call it).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F


def sparse_categorical_crossentropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keras' loss on the softmax output, mean over the batch. Keras' TF backend recovers the
    logits from the softmax (``_keras_logits``), so it is exactly log_softmax of the logits,
    with no 1e-7 clipping of probabilities (checked by ``tf_impl.probes``). Half-precision logits
    are promoted to float32 first, as Keras keeps a mixed model's softmax output in float32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.nll_loss(F.log_softmax(logits, dim=-1), labels)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   *, autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                   scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on the batch (x, y); returns (loss, logits), detached."""
    model.train()
    with autocast():
        logits = model(x)
    loss = sparse_categorical_crossentropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()
