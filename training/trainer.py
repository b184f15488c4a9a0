"""Training as plain functions: `train_one_epoch` and `train` (the whole run, resumable, DDP); validation and the
final test run `qgn.evaluate.evaluate`.

Reproducibility and exact resume: the data order of epoch e is a permutation seeded by (seed, e), and every
training sample is augmented with a generator seeded by (seed, e, index), so a run that stops at any step and
resumes from its checkpoint (model, optimizer, loss scaler, schedule, epoch, step, CPU and CUDA RNG states) skips
the batches it already used and ends with the same weights as an uninterrupted run: bitwise on CPU, and on CUDA
with `deterministic` (deterministic algorithms). Checkpoints: `qgn.checkpoint` (atomic writes, read on the CPU).
Precision (`TrainConfig.amp`, `tf32`) follows `qgn.precision`: autocast around the forward pass and the loss,
loss scaling for fp16, float32 parameters and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from qgn import build_model
from qgn.checkpoint import load_checkpoint, save_checkpoint
from qgn.config import QGNConfig
from qgn.evaluate import evaluate
from qgn.precision import autocast, check_amp, fp32_math, grad_scaler
from training.collate import QuadtreeCollate
from training.config import RunConfig, TrainConfig
from training.datasets import FIXED_CLASSES, DataConfig, dataset_for, datasets_from_config
from training.loss import QuadtreeLoss, build_criterion
from training.transforms import Augment, NormalizeConfig, augment


# ---- data ------------------------------------------------------------------------------------------------------
class SeededAugment(Dataset):
    """A data set whose sample i in epoch e is augmented with a generator seeded by (seed, e, i)."""

    def __init__(self, dataset: Dataset, augment_fn: Augment, seed: int):
        self.dataset, self.augment_fn, self.seed, self.epoch = dataset, augment_fn, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, mask = self.dataset[index]
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint64)
        generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        return augment(image, mask, self.augment_fn.cfg, self.augment_fn.ignore_index, generator)


class EpochOrder(Sampler):
    """This rank's share of a permutation seeded by (seed, epoch) (or of 0..size-1 without shuffle), from sample
    `skip_samples` on. With `pad`, the order is padded so every rank gets the same number of samples (DDP training
    needs equal step counts); without, shares may differ by one (evaluation counts every sample once)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 pad: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.pad, self.epoch, self.skip = pad, 0, 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        if self.pad:
            per_rank = math.ceil(self.size / self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - self.size]])  # equal shares
        return order[self.rank::self.world_size].tolist()

    def __iter__(self):
        return iter(self.indices()[self.skip:])

    def __len__(self) -> int:
        return len(self.indices()) - self.skip


# ---- optimisation ----------------------------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of the parameters that train (SparseRefine's frozen base has none). SegBlocks' policy network
    is its own group, its learning rate scaled by `policy_lr_scale` (the group's "lr_scale")."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    blocks = getattr(getattr(model, "config", None), "segblocks", None)
    if blocks is None:
        params = [{"params": trainable, "lr_scale": 1.0}]
    else:
        policy = {id(p) for p in model.policy.parameters()}
        params = [{"params": [p for p in trainable if id(p) not in policy], "lr_scale": 1.0},
                  {"params": [p for p in trainable if id(p) in policy], "lr_scale": blocks.policy_lr_scale}]
    # fused: one kernel over all parameters instead of a dozen per parameter (AdamW's step on a CPU: 1.2 ms instead
    # of 7.7 ms for QGN's 119 tensors), and without the host synchronisation of GradScaler's inf check
    # (every parameter that trains is a float tensor, a dtype the fused kernels take)
    fused = all(p.device.type in ("cpu", "cuda") for p in trainable) or None
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay,
                                    fused=fused)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if fused:
        optimizer.register_step_post_hook(mark_parameters_written)
    return optimizer


def mark_parameters_written(optimizer: torch.optim.Optimizer, args=(), kwargs=None) -> None:
    """Bump the version counter of every parameter of `optimizer` (a step post-hook). The fused optimizers write the
    parameters without bumping it (torch 2.13), so what is derived from the parameters and kept while they are
    unchanged (`sparse_ops.inference_weights`: the weight matrices an evaluation between training steps uses)
    would otherwise stay stale."""
    torch.autograd.graph.increment_version([p for group in optimizer.param_groups for p in group["params"]])


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total_steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1), 1.0)
    if cfg.schedule == "poly":
        return (1 - progress) ** 0.9
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


# ---- checkpoints -----------------------------------------------------------------------------------------------
def strict_json(value):
    """`value` with every non-finite float replaced by None: log.jsonl stays strict JSON (no bare NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def rng_states(device: torch.device) -> dict:
    """The global RNG states to checkpoint: the CPU generator, and every CUDA generator when training on CUDA."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, device: torch.device) -> None:
    """Set the generators saved by `rng_states` (read on the CPU: `set_rng_state` takes CPU byte tensors only)."""
    torch.set_rng_state(states["torch"].cpu())
    if device.type == "cuda" and "cuda" in states:
        cuda_states = [state.cpu() for state in states["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # another GPU count than the run that wrote it: this process's device is what it trains on
            torch.cuda.set_rng_state(cuda_states[min(device.index or 0, len(cuda_states) - 1)], device)


@contextmanager
def deterministic_algorithms(enabled: bool):
    """`torch.use_deterministic_algorithms(True, warn_only=True)` for the block when `enabled` (restored after): an
    op without a deterministic implementation warns instead of stopping the run. Sets CUBLAS_WORKSPACE_CONFIG
    (cuBLAS needs it before its first use) unless the user has."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


# ---- the loops -------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    epoch: int = 0  # current epoch (0-based)
    step: int = 0  # optimizer steps done in all
    batch_in_epoch: int = 0  # batches of the current epoch done
    best_miou: float = -1.0
    best_epoch: int = -1  # epoch (0-based) of best.pt
    last_miou: float | None = None  # the last validation's mIoU
    seconds: float = 0.0  # wall time spent training (and validating) so far, over every resume
    finished: bool = False  # the run reached its last epoch or max_steps


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C ended a run: `checkpoint` is the file written at the last finished step (None: nothing written)."""

    def __init__(self, checkpoint: Path | None, step: int):
        super().__init__(f"interrupted at step {step}")
        self.checkpoint, self.step = checkpoint, step


class GracefulStop:
    """While active (main thread only): the first SIGINT (Ctrl-C) asks the run to stop after the current step, so
    that the checkpoint holds a finished step; a second one stops at once."""

    def __init__(self):
        self.requested, self._previous = False, None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once, without "
              "saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train_one_epoch(model, criterion, loader, optimizer, cfg: TrainConfig, progress: Progress, total_steps: int,
                    device: torch.device, log: Callable[[dict], None], on_step: Callable[[Progress], None] | None = None,
                    bar=None, scaler: torch.amp.GradScaler | None = None,
                    on_step_start: Callable[[], None] | None = None) -> None:
    """One pass over `loader` (from `progress.batch_in_epoch` on), updating `progress` after every step;
    `on_step_start` is called when a step begins (its batch is loaded), `on_step` when it has ended.

    The forward pass and the loss run under `cfg.amp`'s autocast; `scaler` (`qgn.precision.grad_scaler`; None: no
    loss scaling) scales the loss for fp16 and skips steps whose gradients overflowed. A non-finite loss raises
    FloatingPointError naming the step and the level.
    """
    model.train()
    criterion.train()
    scaler = scaler or grad_scaler("off", device)  # disabled: passes the loss and the step through
    start, images_seen = time.perf_counter(), 0
    for images, masks, tree in loader:
        if cfg.max_steps is not None and progress.step >= cfg.max_steps:
            break
        if on_step_start is not None:
            on_step_start()
        # asynchronous from the pinned batches of a CUDA run (a synchronous copy elsewhere)
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        tree = tree.to(device, non_blocking=True)
        lr = cfg.lr * lr_factor(progress.step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with autocast(cfg.amp, device):
            losses = model_losses(criterion, model(images, tree), tree, masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        # the step's one host synchronisation, once the backward pass is queued (the device runs it meanwhile);
        # before the optimizer step, which a non-finite loss must not reach
        loss_value = float(losses["loss"].detach())
        if not math.isfinite(loss_value):
            bad = [name for name, value in losses.items() if name != "loss" and not torch.isfinite(value)]
            raise FloatingPointError(f"non-finite loss at step {progress.step} (epoch {progress.epoch}): "
                                     f"{', '.join(f'{n}={float(losses[n])}' for n in bad) or 'total'}; lower the "
                                     f"learning rate or set grad_clip")
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        progress.step += 1
        progress.batch_in_epoch += 1
        images_seen += images.shape[0]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if progress.step % cfg.log_every == 0:
            elapsed = time.perf_counter() - start
            values = torch.stack([value.detach().float() for value in losses.values()]).tolist()  # one sync
            log({"step": progress.step, "epoch": progress.epoch, "lr": lr, **dict(zip(losses, values)),
                 "images_per_s": images_seen / elapsed if elapsed > 0 else None,
                 "nodes_per_level": [level.num_nodes for level in tree.levels]})
        if on_step is not None:
            on_step(progress)


def model_losses(criterion, output, tree, masks) -> dict[str, torch.Tensor]:
    """The losses of one forward pass of any model: `QuadtreeLoss` reads the decoder's level logits (QGN and the
    dense twin); the other models' criteria (`training.loss.build_criterion`) take their output whole."""
    if isinstance(criterion, QuadtreeLoss):
        return criterion(output.level_logits, tree, output.full_logits, masks)
    return criterion(output, tree, masks)


# ---- SparseRefine: the base ------------------------------------------------------------------------------------
def base_checkpoint_state(config: RunConfig) -> dict | None:
    """The checkpoint of a SparseRefine run's base (`config.model.refine.base_checkpoint`), checked against the
    run: the same architecture; its normalisation is the run's (an "auto" one is taken from it). None for the
    other models. ValueError naming the difference otherwise."""
    refine = config.model.refine
    if refine is None:
        return None
    if refine.base_checkpoint is None:
        raise ValueError("a sparserefine run needs its base: pass --base-checkpoint BASE.pt (a qgn or dense "
                         "checkpoint of this engine)")
    state = load_checkpoint(refine.base_checkpoint)
    base = QGNConfig.from_dict(state["config"]["model"])
    expected = dataclasses.replace(config.model, model=refine.base_model, refine=None, backend=base.backend)
    if base.as_dict() != expected.as_dict():
        diff = {k: (v, expected.as_dict()[k]) for k, v in base.as_dict().items() if expected.as_dict()[k] != v}
        raise ValueError(f"the base {refine.base_checkpoint} is another network than this run's model section (base "
                         f"vs run: {diff}); train with --base-checkpoint, which takes the base's architecture")
    normalize = NormalizeConfig.from_dict(state["config"].get("data", {}).get("normalize", {}))
    if config.data.normalize.mode == "auto":
        config.data.normalize = normalize
    elif config.data.normalize != normalize:
        raise ValueError(f"the run normalises images as {config.data.normalize} but its base was trained on "
                         f"{normalize}; remove data.normalize from the config to use the base's")
    return state


def start_refinement(model, base_state: dict, config: RunConfig, val_set, collate, device, main_process: bool):
    """Load the base's weights into a new SparseRefine run; with `refine.refine_fraction`, choose tau on the
    validation images so that about that fraction of their pixels is refined (written into the config)."""
    from qgn.sparserefine import choose_tau

    model.base.model.load_state_dict(base_state["model"])
    refine = config.model.refine
    if refine.refine_fraction is None:
        return
    loader = DataLoader(val_set, batch_size=1, collate_fn=collate)
    refine.tau = choose_tau(model, (images.to(device) for images, _, _ in loader), refine.refine_fraction)
    if main_process:
        print(f"sparserefine: tau = {refine.tau:.4g} refines about {100 * refine.refine_fraction:g}% of the "
              f"{len(val_set)} validation images' pixels", file=sys.stderr)


# ---- the run ---------------------------------------------------------------------------------------------------
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use --device cpu")
    return device


def train(config: RunConfig, out_dir: str | Path, resume: bool = False,
          on_step: Callable[[Progress], None] | None = None) -> dict:
    """Train `config` into `out_dir` (config.yaml, last.pt, best.pt, log.jsonl).

    Returns:
        {"miou": last validation mIoU, "best_miou", "best_epoch", "step", "seconds", the last validation's other
        metrics, and "test": {"last": ..., "best": ...} when the data has a labelled test split}.
    Raises:
        TrainingInterrupted: Ctrl-C (after the step under way; `checkpoint` names the file written).

    Under torchrun (WORLD_SIZE > 1) every process trains its share of each batch with DistributedDataParallel
    (gloo on CPU, nccl on CUDA); rank 0 writes the files. TF32 and deterministic algorithms are set as
    `config.train` says for the run and restored after it.
    """
    owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized())
    try:
        with fp32_math(config.train.tf32), deterministic_algorithms(config.train.deterministic):
            result = _train(config, out_dir, resume, on_step)
    except BaseException:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: another rank may never arrive
        raise
    if owns_group and dist.is_initialized():  # a process group left alive can abort the process at its exit
        dist.barrier()  # no rank tears its group down while another still talks to it
        dist.destroy_process_group()
    return result


def _train(config: RunConfig, out_dir: str | Path, resume: bool, on_step) -> dict:
    out_dir, tcfg = Path(out_dir), config.train
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    distributed, main_process = world_size > 1, rank == 0
    device = resolve_device(tcfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    check_amp(tcfg.amp, device)
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    base_state = None if resume else base_checkpoint_state(config)  # SparseRefine: before the data (normalisation)
    # Data first: every data problem surfaces before any training step.
    dcfg, mcfg = config.data, config.model  # classes, depth, channels and the ignore label: mcfg's
    normalize_was_auto = dcfg.normalize.mode == "auto"
    train_base, val_set = datasets_from_config(dcfg, mcfg, augment=False)  # augmented below, seeded per sample;
    #                                                                        dcfg.normalize "auto" is resolved there
    train_set = SeededAugment(train_base, Augment(dcfg.augment, mcfg.depth, mcfg.ignore_index), tcfg.seed)
    collate = QuadtreeCollate(mcfg.depth, mcfg.ignore_index,  # SegBlocks trains on whole blocks
                              multiple=None if mcfg.segblocks is None else mcfg.segblocks.block_size)
    sampler = EpochOrder(len(train_set), tcfg.seed, rank, world_size)
    loader = DataLoader(train_set, batch_size=tcfg.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=tcfg.num_workers, drop_last=False, pin_memory=device.type == "cuda")

    def eval_loader(dataset) -> DataLoader:  # every sample once, shared among the ranks
        return DataLoader(dataset, batch_size=1, collate_fn=collate, num_workers=tcfg.num_workers,
                          sampler=EpochOrder(len(dataset), 0, rank, world_size, shuffle=False, pad=False))

    val_loader = eval_loader(val_set)

    torch.manual_seed(tcfg.seed)
    model = build_model(config.model).to(device)
    if base_state is not None:
        start_refinement(model, base_state, config, val_set, collate, device, main_process)
    criterion = build_criterion(config).to(device)
    optimizer = build_optimizer(model, tcfg)
    scaler = grad_scaler(tcfg.amp, device)
    progress = Progress()
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}; start without --resume")
        state = load_checkpoint(last_path)  # onto the CPU; the state dicts copy to the model's device
        saved, current = state["config"]["model"], config.model.as_dict()
        if saved != current:
            diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current)
                    if saved.get(k) != current.get(k)}
            raise ValueError(f"{last_path} was written with another model config (saved vs current: {diff}); resume "
                             f"with the run's own config.yaml or start a new RUN_DIR")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        criterion.load_state_dict(state["criterion"])
        if state.get("scaler"):  # empty when the run was written without fp16 loss scaling
            scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        # more epochs or steps than the run had asked for continue it
        progress.finished = progress.epoch >= tcfg.epochs or (tcfg.max_steps is not None and
                                                              progress.step >= tcfg.max_steps)
        restore_rng_states(state["rng"], device)
    elif main_process and last_path.exists():
        raise ValueError(f"{out_dir} already holds a run (last.pt); pass --resume to continue it or choose another "
                         f"--out")
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "config.yaml")
    train_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    steps_per_epoch = math.ceil(len(sampler.indices()) / tcfg.batch_size)
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.max_steps is not None:
        total_steps = min(total_steps, tcfg.max_steps)

    def log(record: dict) -> None:
        if main_process:
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")

    def checkpoint(path: Path) -> None:
        if main_process:
            save_checkpoint(path, {"config": config.as_dict(), "model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "criterion": criterion.state_dict(),
                                   "scaler": scaler.state_dict(), "progress": vars(progress).copy(),
                                   "rng": rng_states(device)})

    stop = GracefulStop()
    at_boundary = [True]  # False while a step is under way: its partial state must not be checkpointed

    def step_start() -> None:
        at_boundary[0] = False

    def after_step(p: Progress) -> None:
        at_boundary[0] = True
        if tcfg.checkpoint_every and p.step % tcfg.checkpoint_every == 0:
            checkpoint(last_path)
        if on_step is not None:
            on_step(p)
        requested = torch.tensor([float(stop.requested)], device=device if distributed else "cpu")
        if distributed:  # every rank stops at the same step, or DDP would wait forever
            dist.all_reduce(requested)
        if float(requested) > 0:
            raise KeyboardInterrupt

    if not resume:  # what the data checks found and the normalisation chosen: in the log, and said once
        report = train_base.data_report or {}
        data_record = {"train_images": len(train_base), "val_images": len(val_set),
                       "split": getattr(val_set, "split_note", None), "normalize": vars(dcfg.normalize),
                       **report}
        log({"data": data_record})
        if main_process:
            parts = [f"{len(train_base)} training and {len(val_set)} validation images"]
            if data_record["split"]:
                parts.append(f"validation: {data_record['split']}")
            if report:
                parts.append(f"{100 * report['ignore_fraction']:.1f}% of the training pixels are ignored")
            mode = dcfg.normalize
            source = "auto: " + ("ImageNet's statistics for the pretrained encoder" if mcfg.pretrained_encoder else
                                 "the training images' own statistics") if normalize_was_auto else mode.mode
            parts.append(f"normalisation {source}" + (f" (mean {[round(m, 4) for m in mode.mean]}, std "
                                                      f"{[round(v, 4) for v in mode.std]})" if mode.mean else ""))
            print("data: " + "; ".join(parts), file=sys.stderr)

    bar = None
    if main_process and tcfg.progress and not progress.finished:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=progress.step, desc="train", unit="step", dynamic_ncols=True)
    started, seconds_before = time.perf_counter(), progress.seconds
    last_validated = None  # the epoch of this session's last validation
    summary: dict = {}

    def clock() -> None:
        progress.seconds = seconds_before + time.perf_counter() - started

    try:
        with stop:
            while not progress.finished:
                train_set.set_epoch(progress.epoch)
                sampler.set_epoch(progress.epoch, skip_samples=progress.batch_in_epoch * tcfg.batch_size)
                train_one_epoch(train_model, criterion, loader, optimizer, tcfg, progress, total_steps, device, log,
                                after_step, bar, scaler, step_start)
                out_of_steps = tcfg.max_steps is not None and progress.step >= tcfg.max_steps
                epoch_done = progress.batch_in_epoch >= steps_per_epoch or not out_of_steps  # the loader ran out
                epoch = progress.epoch
                if epoch_done:
                    progress.epoch, progress.batch_in_epoch = epoch + 1, 0
                progress.finished = out_of_steps or progress.epoch >= tcfg.epochs
                if (epoch + 1) % tcfg.val_every == 0 or progress.finished:
                    summary = evaluate(model, val_loader, device, class_names=getattr(val_set, "class_names", None),
                                       amp=tcfg.amp)
                    progress.last_miou, last_validated = summary["miou"], epoch
                    log({"epoch": epoch, "step": progress.step, "val": summary})
                    if bar is not None:
                        bar.write(f"epoch {epoch + 1}/{tcfg.epochs}: val mIoU {summary['miou']:.4f}, "
                                  f"pixel accuracy {summary['pixel_accuracy']:.4f}")
                    if summary["miou"] > progress.best_miou:
                        progress.best_miou, progress.best_epoch = summary["miou"], epoch
                        clock()
                        checkpoint(best_path)
                clock()
                checkpoint(last_path)
    except KeyboardInterrupt as interrupt:
        saved = None
        if at_boundary[0]:  # a finished step: keep the work done; --resume continues from here
            clock()
            checkpoint(last_path)
            saved = last_path
        raise TrainingInterrupted(saved, progress.step) from interrupt
    finally:
        if bar is not None:
            bar.close()
        if distributed:
            dist.barrier()
    result = {"miou": progress.last_miou, "best_miou": progress.best_miou, "best_epoch": progress.best_epoch,
              "step": progress.step, "seconds": progress.seconds, **{k: v for k, v in summary.items() if k != "miou"}}
    test_set = test_split(dcfg, mcfg) if tcfg.test else None
    if test_set is not None:
        test_loader = eval_loader(test_set)
        result["test"] = {}
        for name, path in (("last", last_path), ("best", best_path)):  # written by rank 0 before the barrier
            if name == "best" and progress.best_epoch == last_validated:  # the last validation was the best
                result["test"]["best"] = result["test"]["last"]
                continue
            weights = load_checkpoint(path)["model"] if path.is_file() else model.state_dict()
            model.load_state_dict(weights)
            result["test"][name] = evaluate(model, test_loader, device,
                                            class_names=getattr(test_set, "class_names", None), amp=tcfg.amp)
        log({"test": result["test"], "test_images": len(test_set)})
    return result


def test_split(dcfg: DataConfig, mcfg: QGNConfig):
    """The labelled "test" split of the validation data's spec, or None when it has none (a folder without
    split folders, Cityscapes whose test labels are withheld, ...)."""
    spec = dcfg.val_dataset or dcfg.dataset
    if spec.partition(":")[0] in FIXED_CLASSES:  # public data sets: withheld labels, or "val" reads it already
        return None
    try:
        return dataset_for(dcfg, mcfg, spec, "test")
    except (ValueError, FileNotFoundError):
        return None
