"""The non-finite guard: no weight is ever updated from a NaN or infinite loss, and the loop
never waits for the device to know it.

Each step the guard turns the loss into a flag on the device, agreed over the processes,
and masks the step with it, the way a grad scaler skips a step on its found-inf flag:

    bad    = not isfinite(loss)                       (or-ed over the processes)
    skip   = bad                                      train.nonfinite: skip
             bad or (a non-finite loss was met before)  train.nonfinite: stop
    grads  = 0 where skip                             (the optimizer state sees no NaN)
    W      = W_before where skip, else W_after        (every parameter the optimizer holds,
                                                       after BinOp's projection)

The host reads the flags only when it reads the metric sums anyway (every
`train.log_every` steps, before every checkpoint, at a signal stop and at epoch end); under
`stop` the run then ends with the epoch and step of the first non-finite loss, and no
checkpoint is written after it. A skipped step leaves every parameter as it was; the
optimizer counts it as a step with a zero gradient (its moments decay, its step count
advances).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .devices import accumulator_dtype
from .distributed import Process, any_over_processes


class NonFiniteGuard:
    """Masks the optimizer steps of non-finite losses (see the module docstring)."""

    def __init__(self, mode: str, params: list[torch.nn.Parameter], device: torch.device):
        self.mode, self.params = mode, params
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)  # global step of the first, -1: none
        self.first_loss = torch.zeros((), dtype=accumulator_dtype(device), device=device)

    def skip_flag(self, loss: torch.Tensor, global_step: int, process: Process) -> torch.Tensor:
        """Whether this step must not update the weights (a bool on the device); records the
        first non-finite loss."""
        bad = any_over_processes(~torch.isfinite(loss.detach()), process)
        met_before = self.first_step >= 0
        first = bad & ~met_before
        self.first_step = torch.where(first, global_step, self.first_step)
        self.first_loss = torch.where(first, loss.detach().to(self.first_loss.dtype), self.first_loss)
        return bad | met_before if self.mode == "stop" else bad

    @torch.no_grad()
    def masked_step_(self, skip: torch.Tensor, step: Callable[[], None]) -> None:
        """Run `step` (unscale, clip, optimizer step, projection) on gradients zeroed where
        `skip`, then put back the parameters it changed where `skip`."""
        before = [p.detach().clone() for p in self.params]
        for p in self.params:
            if p.grad is not None:
                p.grad.masked_fill_(skip, 0.0)
        step()
        for p, old in zip(self.params, before):
            p.copy_(torch.where(skip, old, p))

    def first_nonfinite(self) -> tuple[int, float] | None:
        """(global step, loss) of the first non-finite loss under `stop`, else None: one host read."""
        if self.mode != "stop":
            return None
        step, loss = torch.stack([self.first_step.to(self.first_loss.dtype), self.first_loss]).tolist()
        return None if step < 0 else (int(step), loss)
