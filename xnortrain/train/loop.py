"""The training run: config -> model + BinOp -> optimizer, schedule, data -> epochs.

`fit` reads like the algorithm:

    build model, attach BinOp (before the optimizer), optimizer, LR schedule, data
    [resume: real weights, optimizer, scheduler, scaler, position, RNG, best]
    for each epoch: train_one_epoch -> evaluate -> metrics line -> last.pt (and best.pt)

Exact resume: the batches of an epoch are a pure function of (seed, epoch) (see
`data.py`), every RNG state goes into the checkpoint (under data parallel, each process's
draws are a pure function of (seed, rank, step) instead), and a checkpoint written mid-epoch
records how many batches are done and the running sums of the epoch's metrics; so, on
CPU with `train.deterministic`, a resumed run ends bit-identical to an uninterrupted one.

No host sync per step: the epoch's sums stay on the device and the non-finite guard
(`nonfinite.py`) masks a step on the device; the host reads them every `train.log_every`
steps, before a checkpoint, at a signal stop and at epoch end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..binop import BinOp
from ..errors import CheckpointError, ConfigError, TrainingError, UserError, first_line
from ..serialization import atomic_write_text, check_fits_model
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, OptimConfig, ScheduleConfig, dump_config
from .configured_model import attach_binop, configured_model
from .data import build_data, derived_seed
from .devices import accumulator_dtype, select_device
from .distill import Teacher, load_teacher
from .distributed import (
    Process,
    broadcast_buffers,
    largest_over_processes,
    process_group,
    sum_over_processes,
    wait_for_all,
)
from .nonfinite import NonFiniteGuard
from .tensorboard_log import TensorBoardLog
from .warm_start import init_from_checkpoint_


class Interrupted(UserError):
    """SIGINT/SIGTERM: the step finished, last.pt was written; the message says how to resume
    (`announce`: this process prints it, rank 0 alone under data parallel)."""

    def __init__(self, message: str, signum: int, announce: bool = True):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.announce = announce


@dataclasses.dataclass
class Position:
    """Where a run stands: the epoch in progress (0-based) and the batches done in it."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_acc1: float = -math.inf


@dataclasses.dataclass
class Run:
    """Everything one training run holds."""

    config: Config
    model: nn.Module
    binop: BinOp | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    data: object
    device: torch.device
    out_dir: Path
    guard: NonFiniteGuard
    position: Position = dataclasses.field(default_factory=Position)
    running: dict = dataclasses.field(default_factory=dict)  # the epoch's metric sums so far (tensors on the device)
    forward: Callable | None = None  # the training forward: model, DDP-wrapped and/or compiled
    process: Process = dataclasses.field(default_factory=Process)  # rank and world under torchrun
    teacher: Teacher | None = None  # distillation: the frozen teacher whose logits join the loss

    def __post_init__(self):
        if self.forward is None:
            self.forward = self.model


# --- building ---------------------------------------------------------------------


def parameter_groups(config: OptimConfig, model: nn.Module, binop: BinOp | None) -> list[dict]:
    """One group of every parameter; or, with `optim.binary_weight_decay`, the real weights BinOp
    binarizes in a group of their own with that weight decay (binary networks train those
    without decay: their signs, not their sizes, are what the network keeps)."""
    if config.binary_weight_decay is None or binop is None:
        return [{"params": list(model.parameters())}]
    binary = {id(w) for w in binop.weights.values()}
    return [{"params": [p for p in model.parameters() if id(p) not in binary]},
            {"params": list(binop.weights.values()), "weight_decay": config.binary_weight_decay}]


def make_optimizer(config: OptimConfig, params) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov)
    if len(config.betas) != 2:
        raise ConfigError(f"optim.betas: expected two numbers, got {config.betas}")
    optimizer = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    return optimizer(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


def lr_factor(config: ScheduleConfig, epochs: int, t: float, tick: float = 1.0) -> float:
    """The learning-rate multiplier at epoch `t` (0-based; fractional where the rate changes every
    step, `tick` being one step in epochs): linear warm-up, then the schedule."""
    if t < config.warmup_epochs:
        return (t + tick) / config.warmup_epochs
    if config.name == "multistep":
        return config.gamma ** sum(t >= m for m in config.milestones)
    if config.name == "step":
        return config.gamma ** (t // config.step_size)
    span = max(1, epochs - config.warmup_epochs)
    if config.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (t - config.warmup_epochs) / span))
    if config.name == "linear":
        return 1 - (t - config.warmup_epochs) / span
    return 1.0


def ticks_per_epoch(config: ScheduleConfig, steps_per_epoch: int) -> int:
    """How often the schedule ticks in an epoch: once, or with `interval: step` every step."""
    return steps_per_epoch if config.interval == "step" else 1


def make_scheduler(config: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over ticks (see `tick`); tick n is epoch n / ticks_per_epoch."""
    ticks = ticks_per_epoch(config, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: lr_factor(config, epochs, n / ticks, 1 / ticks))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def build_run(config: Config, process: Process = Process()) -> Run:
    seed_everything(config.train.seed, config.train.deterministic)
    device = select_device(config.train.device)
    if device.type == "cuda" and process.world > 1:
        device = torch.device("cuda", process.local_rank)
    if config.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp: fp16 needs a CUDA device (this run uses {device.type}); use bf16 or none")
    data = build_data(config.data, seed=config.train.seed)
    if process.world > 1:  # data.batch_size stays the per-process batch
        data = dataclasses.replace(data, train=data.train.shard(process.rank, process.world),
                                   eval=data.eval.shard(process.rank, process.world, pad=False))
    model = configured_model(config, data.num_classes, data.input_shape).to(device)
    binop = attach_binop(config, model, data.input_shape) if config.binop.enabled else None
    if config.model.init_from is not None:  # after BinOp, whose input thresholds are parameters too
        init_from_checkpoint_(model, config.model.init_from, config.model.init_exclude)
        if binop is not None:
            binop.project_()  # the loaded weights projected as a fresh init is
    teacher = None
    if config.distill.teacher is not None:  # not wrapped in DDP: it never trains
        teacher = load_teacher(config.distill, data, device)
    optimizer = make_optimizer(config.optim, parameter_groups(config.optim, model, binop))
    if binop is not None:
        binop.project_after(optimizer)
    scheduler = make_scheduler(config.schedule, optimizer, config.train.epochs, len(data.train))
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp == "fp16")
    guard = NonFiniteGuard(config.train.nonfinite, [p for group in optimizer.param_groups for p in group["params"]],
                           device)
    # wrapped and compiled after BinOp is attached; checkpoints and evaluation use the module
    # itself (plain keys)
    forward = model
    if process.world > 1:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.train.compile:
        forward = torch.compile(forward)
    return Run(config, model, binop, optimizer, scheduler, scaler, data, device, Path(config.train.out_dir), guard,
               forward=forward, process=process, teacher=teacher)


# --- checkpoints --------------------------------------------------------------------------


def checkpoint_state(run: Run, running: dict[str, float]) -> dict:
    return {
        "model": run.model.state_dict(),  # real weights, plain keys
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": run.position.epoch,
        "step": run.position.step,
        "global_step": run.position.global_step,
        "best_acc1": run.position.best_acc1,
        "running": running,
        "rng": rng_state(),
        "config": run.config.to_dict(),
        "data_shape": {"num_classes": run.data.num_classes, "input_shape": list(run.data.input_shape)},
    }


def save(run: Run, *names: str) -> None:
    """Write the run's state (gathered once) to each of the named checkpoints. A write that
    fails (disk full, no permission) is one CheckpointError line; the file it would have
    replaced stays as it was (the write goes to a temporary file first)."""
    # the epoch's sums so far, of all processes: a resumed epoch goes on from their total
    running = sum_over_processes(run.running, run.process) if run.running else {}
    if not run.process.is_main:  # rank 0 writes; the others hold the same state
        return
    state = checkpoint_state(run, running)
    for name in names:
        try:
            save_checkpoint(run.out_dir / name, state)
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
            reason = getattr(err, "strerror", None) or first_line(err)
            raise CheckpointError(f"cannot write {run.out_dir / name} ({reason}); the previous "
                                  f"{name} is intact; free space or fix permissions, then resume with --resume") from None


def load_weights(run: Run, path: Path) -> dict:
    """Load a checkpoint's real weights into the run's model (refusing a foreign one)."""
    state = load_checkpoint(path)
    check_fits_model(path, state["model"], run.model)
    run.model.load_state_dict(state["model"])
    return state


def restore(run: Run, path: Path) -> None:
    state = load_weights(run, path)
    changed = changed_keys(state["config"], run.config.to_dict())
    if changed and run.process.is_main:  # e.g. train.epochs raised under cosine: the schedule changes too
        print(f"xnortrain: resuming {path} with a changed config: {changed}", file=sys.stderr, flush=True)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.position = Position(state["epoch"], state["step"], state["global_step"], state["best_acc1"])
    run.running = dict(state["running"]) if run.process.is_main else {}  # the total, counted once
    set_rng_state(state["rng"])


def changed_keys(old: dict, new: dict) -> str:
    """The config keys whose values differ, as 'section.key old -> new, ...' ('' when none)."""
    changes = []
    for section, values in new.items():
        for key, value in values.items():
            before = old.get(section, {}).get(key, "(absent)")
            if before != value:
                changes.append(f"{section}.{key} {before} -> {value}")
    return ", ".join(changes)


# --- the loop ----------------------------------------------------------------------------


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag that the loop reads after each step. With `ignore_after_stop`
    (data parallel) a process that stopped at a signal ignores both until it exits: torchrun
    terminates the processes still running as soon as one exits, and they are all on their
    way out already. (SIG_IGN, not a handler: the interpreter resets handlers, not SIG_IGN,
    before it finishes exiting.)"""

    def __init__(self, ignore_after_stop: bool = False):
        self.signum: int | None = None
        self.ignore_after_stop = ignore_after_stop
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, exc_type, *exc):
        ignore = exc_type is Interrupted and self.ignore_after_stop
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if ignore else handler)


def autocast(run: Run):
    if run.config.train.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if run.config.train.amp == "bf16" else torch.float16
    return torch.autocast(run.device.type, dtype=dtype)


def seed_process_draws(run: Run) -> None:
    """Data parallel: the global RNG of each process, which dropout and stochastic quantizers
    draw from, seeded from (seed, rank, global step) before every step. The processes then
    draw different masks, and a resumed run draws the same ones again without keeping every
    process's RNG state in the checkpoint, which rank 0 alone writes. One process keeps the
    single RNG stream that the checkpoint saves."""
    if run.process.world > 1:
        torch.manual_seed(derived_seed("draws", run.config.train.seed, run.process.rank, run.position.global_step))


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, criterion,
               index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch (x, y), the training samples `index` where known (a
    teacher then looks up the logits it remembered); returns the loss, the number of correct
    top-1 predictions and whether the step was skipped for a non-finite loss (no update made;
    see `nonfinite.py`), all on the device, unread."""
    seed_process_draws(run)
    run.optimizer.zero_grad(set_to_none=True)
    with autocast(run):
        logits = run.forward(x)
        loss = criterion(logits, y)
        if run.teacher is not None:
            loss = run.teacher.loss(x, index, logits, loss)
    skipped = run.guard.skip_flag(loss, run.position.global_step, run.process)
    run.scaler.scale(loss).backward()
    run.guard.masked_step_(skipped, lambda: optimizer_step(run))
    return loss.detach(), (logits.argmax(1) == y).sum(), skipped


def optimizer_step(run: Run) -> None:
    """Unscale and clip where asked, then step; BinOp's post-hook projects the real weights."""
    if run.config.train.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.train.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()


def epoch_sums(run: Run) -> dict[str, torch.Tensor]:
    """The epoch's running sums on the device, restored from a mid-epoch checkpoint where there
    is one, in the accumulator dtype (`devices.py`): a resumed epoch adds up exactly."""
    return {k: torch.full((), run.running.get(k, 0.0), dtype=accumulator_dtype(run.device), device=run.device)
            for k in ("loss", "correct", "count", "skipped")}


def add_step_(sums: dict[str, torch.Tensor], loss: torch.Tensor, correct: torch.Tensor, skipped: torch.Tensor,
              count: int) -> None:
    """Add one step to the sums, on the device; a skipped step counts in `skipped` alone."""
    kept = ~skipped
    sums["loss"] += torch.where(kept, loss.to(sums["loss"].dtype) * count, 0.0)
    sums["correct"] += torch.where(kept, correct, 0)
    sums["count"] += torch.where(kept, count, 0)
    sums["skipped"] += skipped


def read_sums(run: Run, over_processes: bool = False) -> dict[str, float]:
    """The host read of the epoch's sums (this process's, or all processes'), which is also
    where a non-finite loss met under `train.nonfinite: stop` ends the run."""
    first = run.guard.first_nonfinite()
    if first is not None:
        step, loss = first
        steps = len(run.data.train)
        raise TrainingError(
            f"loss is {loss} at epoch {step // steps + 1}, step {step % steps + 1}; stopped without updating the "
            f"weights from it, the checkpoints in {run.out_dir} hold the last good state; lower optim.lr, "
            f"set train.grad_clip, or set train.nonfinite: skip")
    return sum_over_processes(run.running, run.process if over_processes else Process())  # Process(): alone


def train_means(sums: dict[str, float]) -> tuple[float, float]:
    """Mean loss and top-1 of the steps summed so far (NaN where every step was skipped)."""
    count = sums["count"] or math.nan
    return sums["loss"] / count, sums["correct"] / count


def train_one_epoch(run: Run, stop: StopFlag, show_progress: bool, board: TensorBoardLog | None = None) -> None:
    """The epoch's steps from the run's position on; the host reads the device every
    `train.log_every` steps, before each checkpoint and at a stop, not per step."""
    from tqdm import tqdm

    run.model.train()
    epoch, train = run.position.epoch, run.data.train
    criterion = nn.CrossEntropyLoss(label_smoothing=run.config.train.label_smoothing)
    sums = run.running = epoch_sums(run)
    every, log_every = run.config.train.checkpoint_every_steps, run.config.train.log_every
    bar = tqdm(total=len(train), initial=run.position.step, desc=f"epoch {epoch + 1}",
               disable=not show_progress, leave=False, dynamic_ncols=True)
    for index, x, y in train.indexed_batches(epoch, start=run.position.step, device=run.device):
        add_step_(sums, *train_step(run, x, y, criterion, index), len(y))
        run.position.step += 1
        run.position.global_step += 1
        tick(run, "step")
        bar.update(1)
        signum = largest_over_processes(stop.signum or 0, run.process)  # every process stops at this step
        if signum:
            bar.close()
            stop_at_signal(run, signum)
        if run.position.global_step % log_every == 0:
            loss, acc1 = train_means(read_sums(run))
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc1:.2%}", refresh=False)
            if board is not None:
                board.log_progress(run.position.global_step, loss, acc1, run.optimizer.param_groups[0]["lr"])
        if every is not None and run.position.global_step % every == 0:
            read_sums(run)  # no checkpoint after a non-finite loss under nonfinite: stop
            save(run, "last.pt")
    bar.close()


def stop_at_signal(run: Run, signum: int) -> None:
    """Write last.pt at the step that every process agreed to stop at, and raise Interrupted."""
    read_sums(run)
    save(run, "last.pt")
    wait_for_all(run.process)  # no process exits before rank 0 has written last.pt
    raise Interrupted(f"stopped by {signal.Signals(signum).name} at epoch {run.position.epoch + 1}, step "
                      f"{run.position.step}; {run.out_dir / 'last.pt'} written; resume with --resume", signum,
                      announce=run.process.is_main)


def rate_at_epoch_start(run: Run) -> float:
    """The learning rate of the epoch's first step by the schedule, what its metrics line
    reports (also for an epoch resumed in the middle, whose rate has moved on)."""
    first_tick = run.position.epoch * ticks_per_epoch(run.config.schedule, len(run.data.train))
    return run.scheduler.base_lrs[0] * run.scheduler.lr_lambdas[0](first_tick)


def tick(run: Run, interval: str) -> None:
    """Advance the learning-rate schedule if it changes every `interval` ("epoch" or "step")."""
    if run.config.schedule.interval == interval:
        with warnings.catch_warnings():  # a resumed run, or a skipped step, may tick before any optimizer.step()
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            run.scheduler.step()


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, num_classes: int, amp_context=None,
             process: Process = Process()) -> dict:
    """Loss and top-1 (top-5 where there are >= 5 classes) on the eval set; real weights untouched.
    Under data parallel each process evaluates its shard with rank 0's buffers, and the sums
    are added up over the processes. The sums stay on the device until the end: one host read."""
    model.eval()
    broadcast_buffers(model, process)
    sums = {k: torch.zeros((), dtype=accumulator_dtype(device), device=device) for k in ("loss", "correct1", "correct5", "count")}
    for x, y in batches.batches(0, device=device):
        with amp_context or contextlib.nullcontext():
            logits = model(x)
        sums["loss"] += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        top = logits.topk(min(5, num_classes), dim=1).indices  # (B, min(5, classes))
        sums["correct1"] += (top[:, 0] == y).sum()
        sums["correct5"] += (top == y[:, None]).any(1).sum()
        sums["count"] += len(y)
    sums = sum_over_processes(sums, process)
    metrics = {"val_loss": sums["loss"] / sums["count"], "val_acc1": sums["correct1"] / sums["count"]}
    if num_classes >= 5:
        metrics["val_acc5"] = sums["correct5"] / sums["count"]
    return metrics


def finish_epoch(run: Run, epoch_time: float, lr: float, board: TensorBoardLog | None = None) -> dict:
    """Evaluate (when due), log the epoch's metrics, advance the position, write checkpoints."""
    cfg, epoch = run.config.train, run.position.epoch
    due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
    sums = read_sums(run, over_processes=True)
    loss, acc1 = train_means(sums)
    metrics = {"epoch": epoch + 1, "step": run.position.global_step, "lr": lr, "train_loss": loss, "train_acc1": acc1}
    if sums.get("skipped"):
        metrics["skipped_steps"] = int(sums["skipped"])
    if due:
        metrics.update(evaluate(run.model, run.data.eval, run.device, run.data.num_classes, autocast(run), run.process))
    metrics["epoch_time_s"] = epoch_time
    tick(run, "epoch")
    run.position.epoch, run.position.step, run.running = epoch + 1, 0, {}
    improved = due and metrics["val_acc1"] > run.position.best_acc1
    if improved:
        run.position.best_acc1 = metrics["val_acc1"]
    # the epoch's lines first, then the checkpoint: a kill in between only makes resume redo
    # the epoch (and drop its line); the other order could lose the line for good
    if run.process.is_main:
        append_line(run.out_dir / "metrics.jsonl", json.dumps(metrics))
        append_line(run.out_dir / "train.log", summary_line(metrics, cfg.epochs))
    if board is not None:
        board.log_epoch(metrics, run.binop.weights if run.binop is not None else {})
    save(run, "last.pt", *(["best.pt"] if improved else []))
    return metrics


def summary_line(m: dict, epochs: int) -> str:
    val = f", val loss {m['val_loss']:.4f}, val acc {m['val_acc1']:.2%}" if "val_acc1" in m else ""
    return (f"epoch {m['epoch']}/{epochs}: lr {m['lr']:.3g}, train loss {m['train_loss']:.4f}, "
            f"train acc {m['train_acc1']:.2%}{val}, {m['epoch_time_s']:.1f} s")


def append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def keep_metrics_up_to(path: Path, epochs_done: int) -> None:
    """On resume, drop metric lines of epochs that the resumed checkpoint had not reached,
    and a last line torn by a kill mid-write."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and _epoch_of(ln) <= epochs_done]
        atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def _epoch_of(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # not a whole metrics line: dropped


def fit(config: Config, *, resume: str | Path | None = None, quiet: bool = False) -> list[dict]:
    """Train as configured (resuming from `resume` if given); returns the metrics of the epochs run."""
    with process_group() as process:  # the run, holding DDP, goes before the group does
        try:
            return train(build_run(config, process), resume, quiet)
        except Interrupted as stop:  # every process stopped at the same step: leave the group too
            interrupted = stop.with_traceback(None)  # its frames would keep the run
    raise interrupted


def train(run: Run, resume: str | Path | None, quiet: bool) -> list[dict]:
    """The epochs of a built run, restored from `resume` first where given."""
    if resume is not None:
        restore(run, Path(resume))
    main = run.process.is_main  # only rank 0 writes files and prints
    if main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(run.config, run.out_dir / "config.yaml")
        keep_metrics_up_to(run.out_dir / "metrics.jsonl", run.position.epoch)
    show_progress = main and not quiet and sys.stderr.isatty()
    board = TensorBoardLog(run.out_dir) if main and run.config.train.tensorboard else None
    history = []
    with StopFlag(ignore_after_stop=run.process.world > 1) as stop, board or contextlib.nullcontext():
        while run.position.epoch < run.config.train.epochs:
            start, lr = time.perf_counter(), rate_at_epoch_start(run)
            train_one_epoch(run, stop, show_progress, board)
            metrics = finish_epoch(run, time.perf_counter() - start, lr, board)
            history.append(metrics)
            if main and not quiet:
                print(summary_line(metrics, run.config.train.epochs), flush=True)
    return history


def evaluate_checkpoint(config: Config, path: str | Path) -> dict:
    """Evaluate the real weights of a checkpoint, binarized as in training."""
    with process_group() as process:
        return evaluate_weights(build_run(config, process), Path(path))


def evaluate_weights(run: Run, path: Path) -> dict:
    load_weights(run, path)
    return evaluate(run.model, run.data.eval, run.device, run.data.num_classes, autocast(run), run.process)
