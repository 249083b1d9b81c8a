"""Knowledge distillation from a trained teacher (`distill` in the config).

Hinton et al., "Distilling the knowledge in a neural network" (2015); for binary networks
a full-precision teacher is the lever of Real-to-Binary (Martinez et al., ICLR 2020) and
ReActNet (Liu et al., ECCV 2020). The student's loss on a batch is

    L = (1 - w) * CE(z_s, y) + w * T^2 * KL(p_t || p_s),   p = softmax(z / T)

with z_s, z_t the student's and the teacher's logits of the same batch, KL averaged over
the batch, and T^2 keeping the gradient of the soft term at the scale of CE's as T grows.
The teacher is a checkpoint this trainer wrote, rebuilt from the config stored in it,
frozen and in eval mode; its logits are computed under no_grad.

Where the training images are not augmented (the MNIST family, synthetic data, CIFAR with
`data.augment: false`) and the teacher draws no random numbers (as a stochastic quantizer
does), the teacher sees the same image every epoch and gives it the same logits, so they
are computed once, at the first step, for every training sample in batches of the training
batch size, and looked up by sample index from then on: one teacher pass per run instead
of one per epoch. They are the logits the teacher gives in the steps, to
float rounding, and bit for bit where the teacher's kernels compute each sample of a batch
the same whatever the other samples are (docs/recipes.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError
from .config import DistillConfig
from .configured_model import model_from_checkpoint
from .data import EpochBatches, TrainData


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, ce: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """(1 - w) * ce + w * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), KL averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (N, C)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)  # (N, C)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1 - weight) * ce + weight * temperature**2 * kl


class Teacher:
    """A frozen model in eval mode whose logits soften the student's targets.

    With `fixed_split` (a training split whose inputs are the same every epoch) the logits of
    all its samples are computed on the first call and looked up by sample index after,
    unless a forward pass of the model on its first batch draws random numbers (a stochastic
    quantizer: its logits change from pass to pass)."""

    def __init__(self, model: nn.Module, weight: float, temperature: float, fixed_split: EpochBatches | None = None):
        self.model = model.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature
        if fixed_split is not None:
            first_batch = next(fixed_split.batches(0, device=next(self.model.parameters()).device))[0]
            fixed_split = None if draws_random_numbers(self.model, first_batch) else fixed_split
        self.fixed_split = fixed_split
        self.remembered: torch.Tensor | None = None  # (N, C): the logits of every sample of fixed_split

    def loss(self, x: torch.Tensor, index: torch.Tensor | None, student_logits: torch.Tensor,
             ce: torch.Tensor) -> torch.Tensor:
        """The distillation loss of the batch `x` (the training samples `index`, where known),
        given the student's logits and its CE loss."""
        return distillation_loss(student_logits, self.logits(x, index), ce, self.weight, self.temperature)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The teacher's logits (N, C) of the batch `x`: remembered where `x` is the training
        samples `index` of a fixed split, else computed."""
        if self.fixed_split is None or index is None:
            return self.model(x)
        if self.remembered is None:
            self.remembered = torch.cat([self.model(batch) for _, batch, _ in
                                         self.fixed_split.indexed_batches(0, device=x.device)])
        return self.remembered[index.to(x.device)]


def load_teacher(config: DistillConfig, data: TrainData, device: torch.device) -> Teacher:
    """The teacher of `config.teacher`, checked against the student's data, on `device`; its
    logits of `data.train` remembered where that split's inputs are fixed (`Teacher`).
    Building it leaves the global RNG as it was, so the student's run draws the same numbers
    with or without a teacher."""
    try:
        with torch.random.fork_rng(devices=[]):
            teacher = model_from_checkpoint(config.teacher)
    except CheckpointError as err:
        raise CheckpointError(f"distill.teacher: {err}") from None
    found, wanted = (teacher.num_classes, tuple(teacher.input_shape)), (data.num_classes, tuple(data.input_shape))
    if found != wanted:
        raise CheckpointError(f"distill.teacher: {config.teacher} was trained on {found[0]} classes of input "
                              f"{list(found[1])}, this run has {wanted[0]} classes of input {list(wanted[1])}; "
                              f"give a teacher trained on the same data")
    fixed_split = data.train.in_order() if data.train.fixed_inputs else None
    return Teacher(teacher.model.to(device), config.weight, config.temperature, fixed_split)


@torch.no_grad()
def draws_random_numbers(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether a forward pass of `model` on `x` draws from the global RNG of the CPU or of x's
    CUDA device; the RNG is left as it was."""
    def states() -> list[torch.Tensor]:
        cuda = [torch.cuda.get_rng_state(x.device)] if x.device.type == "cuda" else []
        return [torch.get_rng_state(), *cuda]

    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        before = states()
        model(x)
        return not all(torch.equal(a, b) for a, b in zip(before, states()))
