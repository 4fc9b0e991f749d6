"""The shared training loop: progress, EMA, atomic checkpoints, resume, sample-based validation, DDP.

One checkpoint file serves both purposes: ``state_dict`` holds the EMA weights
(what ``geo3d.load_model`` and ``geo3d generate`` use) and ``extra.train_state``
the raw weights, optimiser, EMA and loop position needed to resume exactly.
``last.pt`` is rewritten every ``checkpoint_every_steps``; ``best.pt`` whenever
validation improves the task's headline metric. Logs: ``train.csv``, ``val.csv``
and TensorBoard events (``tb/``) in the same folder (geo3d.train.run_log).

Resume is exact (bit for bit, ``num_workers=0``): the sampler is seeded per epoch,
the task's generator per step, augmentations per epoch (``task.set_epoch``), and
the checkpoint carries torch's global RNG state (dropout).

Data parallel: launched with ``torchrun --nproc-per-node K geo3d train ...``
the loop uses ``torch.distributed`` (gloo on CPU, NCCL on GPU) and a
``DistributedSampler``; rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, RandomSampler
from torch_geometric.loader import DataLoader

from geo3d.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from geo3d.registry import config_class, resolve_model
from geo3d.train.config import ExperimentConfig
from geo3d.train.ema import EMA
from geo3d.train.lr_schedule import learning_rate
from geo3d.train.precision import autocast_context
from geo3d.train.run_log import RunLog

console = Console()


class Task(Protocol):
    """What the trainer needs from a task (molecule generation, point-cloud classification, ...)."""

    arch: str
    name: str
    headline: str  # validation metric that selects best.pt (higher is better, unless lower_is_better)

    def datasets(self) -> tuple[Dataset, Dataset]: ...
    def model_config(self, train_set: Dataset) -> dict[str, Any]: ...
    def build_model(self, model_config: dict[str, Any]) -> nn.Module: ...
    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]: ...


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _warm_start(model: nn.Module, arch: str, init: dict[str, Any], where: str) -> None:
    """Load ``init`` (a checkpoint's contents) into ``model`` or into the part that takes its arch.

    A model class may declare ``warm_start_parts = {arch: attribute}``: a checkpoint of that
    architecture seeds that sub-module (e.g. a segmentation APEN seeding the backbone of a
    detector); its config must match the part's, key by key.
    """
    target = model
    if init["arch"] != arch:
        parts = getattr(type(model), "warm_start_parts", {})
        if init["arch"] not in parts:
            raise CheckpointError(
                f"{where}: holds a {init['arch']!r} model, this config trains {arch!r}, which takes the "
                f"weights of {sorted({arch, *parts})} only"
            )
        target = getattr(model, parts[init["arch"]])
        ours, theirs = target.config, type(target)(init["config"]).config
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise CheckpointError(
                f"{where}: its {init['arch']!r} config differs from this model's "
                f"{parts[init['arch']]!r} in {differ}"
            )
    # Parameters a training key adds (EQGAT-diff's self-conditioning inputs) start at zero, so the model
    # computes what the checkpoint did; a checkpoint without them may still seed it.
    new = target.warm_start_new_parameters() if hasattr(target, "warm_start_new_parameters") else set()
    try:
        missing, unexpected = target.load_state_dict(init["state_dict"], strict=not new)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not fit: {exc}") from exc
    if unexpected or set(missing) - new:
        raise CheckpointError(
            f"{where}: weights do not fit: missing {sorted(set(missing) - new)}, unexpected {sorted(unexpected)}"
        )


def _start_config(
    task: Task, cfg: ExperimentConfig, train_set: Dataset, state: dict | None, rank: int
) -> tuple[dict[str, Any], tuple[Path, dict] | None]:
    """The model config to build, and ``(path, checkpoint)`` of ``train.init_from`` for a warm start.

    Resuming: ``last.pt``'s config. Warm start of the same architecture: the checkpoint's config and
    all its weights, but this config's ``training_keys`` (the objective: loss weights, time draw); of
    another one: this config's model, one of whose parts (``warm_start_parts``)
    takes the checkpoint whole. Otherwise the task's config from the training set.
    """
    if state is not None:
        return state["config"], None
    if cfg.train.init_from is None:
        return task.model_config(train_set), None
    init_path = resolve_model(cfg.train.init_from)
    init = load_checkpoint(init_path)
    if init["arch"] != task.arch:
        return task.model_config(train_set), (init_path, init)
    # The architecture comes from the checkpoint; the training objective from this config (a key
    # it leaves out means the default, as everywhere). Configs are stored as written, not resolved.
    schema = config_class(task.arch)
    default = {k: schema.model_fields[k].get_default(call_default_factory=True) for k in schema.training_keys}
    objective = {k: cfg.model[k] for k in schema.training_keys if k in cfg.model}
    unused = sorted(
        k
        for k, v in cfg.model.items()
        if k in init["config"] and init["config"][k] != v and k not in schema.training_keys
    )
    if unused and rank == 0:
        console.print(
            f"[yellow]train.init_from: the model config comes from {init_path} (same "
            f"architecture); this config's model keys {unused} differ from it and are not used[/yellow]"
        )
    changed = sorted(k for k in default if objective.get(k, default[k]) != init["config"].get(k, default[k]))
    if changed and rank == 0:
        console.print(f"train.init_from: training with this config's {changed}, not the checkpoint's")
    kept = {k: v for k, v in init["config"].items() if k not in default}
    return {**kept, **objective}, (init_path, init)


class _Run:
    """One training run's state (weights, optimiser, EMA, loop position, best score) and what the loop
    does with it: restore, save a checkpoint, validate, build an epoch's loader, take a step."""

    def __init__(
        self, task: Task, cfg: ExperimentConfig, dev: torch.device, model_config: dict, model: nn.Module
    ) -> None:
        self.task, self.cfg, self.dev, self.model_config, self.model = task, cfg, dev, model_config, model
        self.rank, self.world = _world()
        # fused: one C++ kernel over all parameters on the CPU (~4% of an EQGAT step against the
        # per-parameter loop); the same update and the same state_dict, so resumes are unaffected.
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            amsgrad=cfg.optim.amsgrad,
            fused=dev.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters()),
        )
        self.ema = EMA(model, cfg.train.ema_decay)
        self.ema_extra = [EMA(model, d) for d in cfg.train.ema_extra_decays]
        self.step, self.epoch, self.best = 0, 0, -math.inf
        self.metrics: dict[str, Any] = {}
        self.ddp_model = model
        if self.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None
            )

    def restore(self, state: dict) -> None:
        """Continue exactly where ``state`` (a ``last.pt``) stopped."""
        ts = state["extra"]["train_state"]
        self.model.load_state_dict(ts["model"])
        self.optimizer.load_state_dict(ts["optimizer"])
        self.ema.load_state_dict(ts["ema"])
        saved = {e["decay"]: e for e in ts.get("ema_extra", [])}
        for ema in self.ema_extra:  # a decay added on resume starts from the main shadow
            ema.load_state_dict(saved.get(ema.decay, {**ts["ema"], "decay": ema.decay}))
        self.step, self.epoch, self.best = ts["step"], ts["epoch"], ts["best"]
        if "torch_rng" in ts:  # dropout etc.: continue the random stream exactly where it stopped
            torch.set_rng_state(ts["torch_rng"])

    def save(self, path: Path) -> None:
        if self.rank != 0:
            return
        task = self.task
        # Entries a task fits at validation (a potential's training domain) join the config.
        fitted = task.fitted_config() if hasattr(task, "fitted_config") else {}
        save_checkpoint(
            path,
            arch=task.arch,
            task=task.name,
            config={**self.model_config, **fitted},
            state_dict=self.ema.shadow,
            metrics={"headline": task.headline, **self.metrics},
            extra={
                "train_state": {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "ema": self.ema.state_dict(),
                    "ema_extra": [e.state_dict() for e in self.ema_extra],
                    "step": self.step,
                    "epoch": self.epoch,
                    "best": self.best,
                    "experiment": self.cfg.model_dump(),
                    "torch_rng": torch.get_rng_state(),
                }
            },
        )

    def validate(self, val_set: Dataset, best_path: Path, log: RunLog | None) -> None:
        """Score the EMA weights; a new best headline score writes ``best_path``."""
        task = self.task
        self.metrics = _evaluate(task, self.model, self.ema, val_set, self.rank)
        self.metrics["epoch"], self.metrics["step"] = self.epoch, self.step
        if log is not None:
            log.validation(self.step, self.epoch, self.metrics)
        score = float(self.metrics.get(task.headline, -math.inf))
        if getattr(task, "lower_is_better", False):
            score = -float(self.metrics.get(task.headline, math.inf))
        if score > self.best:
            self.best = score
            self.save(best_path)
        if self.rank == 0:
            summary = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items() if isinstance(v, float))
            console.print(f"epoch {self.epoch} step {self.step}: {summary}")

    def loader(self, train_set: Dataset) -> DataLoader:
        """This epoch's batches, shuffled deterministically (a resumed run skips exactly those seen)."""
        tc = self.cfg.train
        if hasattr(self.task, "set_epoch"):  # augmentation streams restart per epoch (exact resume)
            self.task.set_epoch(self.epoch)
        if self.world > 1:
            sampler = DistributedSampler(
                train_set, num_replicas=self.world, rank=self.rank, seed=tc.seed + self.epoch
            )
        else:
            sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(tc.seed + self.epoch))
        # Its own generator: a DataLoader without one draws a worker seed from torch's global
        # RNG each epoch, so a resumed run would shift the dropout stream by one draw.
        return DataLoader(
            train_set,
            batch_size=tc.batch_size,
            sampler=sampler,
            num_workers=tc.num_workers,
            generator=torch.Generator().manual_seed(tc.seed + 31 * self.epoch + 1),
        )

    def train_step(
        self, batch: Any, generator: torch.Generator, total_steps: int
    ) -> tuple[float, Any, dict, float]:
        """One optimiser step on ``batch``: ``(lr, loss, loss parts, gradient norm)``."""
        tc = self.cfg.train
        lr = learning_rate(self.cfg, self.step, total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The task's randomness (diffusion times, noise, ...) is re-seeded from (seed, rank, step)
        # at every step, so a resumed run draws exactly what an uninterrupted one would.
        generator.manual_seed(tc.seed * 1_000_003 + 7_919 * self.step + self.rank)
        with autocast_context(tc.precision, self.dev.type):
            loss, parts = self.task.loss(self.ddp_model, batch, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step} (parts: {parts})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
        self.optimizer.step()
        for ema in (self.ema, *self.ema_extra):
            ema.update(self.model)
        self.step += 1
        return lr, loss, parts, gnorm


def train(
    task: Task,
    cfg: ExperimentConfig,
    device: str = "cpu",
    resume: bool = True,
    max_minutes: float | None = None,
) -> Path:
    """Train ``task`` as ``cfg`` says; returns the path of the best (or last) checkpoint.

    ``resume``: continue from ``out_dir/last.pt`` when it exists. ``max_minutes``:
    stop cleanly (checkpoint written) after this much wall time.
    """
    dev = torch.device(device)
    _init_distributed(dev)
    rank, world = _world()
    tc = cfg.train
    out = Path(tc.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    torch.manual_seed(tc.seed)

    train_set, val_set = task.datasets()
    state = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        if state["arch"] != task.arch:
            raise CheckpointError(
                f"{last_path}: holds a {state['arch']!r} model, this config trains {task.arch!r}"
            )
    model_config, init = _start_config(task, cfg, train_set, state, rank)
    model = task.build_model(model_config).to(dev)
    if tc.compile:
        compile_model(model)
    if init is not None:
        _warm_start(model, task.arch, init[1], f"{init[0]} (train.init_from)")
    run = _Run(task, cfg, dev, model_config, model)
    if init is not None:
        for ema in (run.ema, *run.ema_extra):  # already-trained weights: the full decay from the first step
            ema.step = 10**6
        if rank == 0:
            console.print(f"warm start from {init[0]}")
    if state is not None:
        run.restore(state)
        if rank == 0:
            console.print(
                f"resumed from {last_path}: epoch {run.epoch}, step {run.step}, "
                f"best {task.headline}={run.best:.4g}"
            )

    generator = torch.Generator(device="cpu")
    log = RunLog(out, resume_step=run.step) if rank == 0 else None
    start = time.monotonic()
    steps_per_epoch = math.ceil(len(train_set) / (tc.batch_size * world))
    stopped_early = False
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=rank != 0,
    ) as progress:
        bar = progress.add_task(f"epoch {run.epoch + 1}/{tc.epochs}", total=steps_per_epoch, info="")
        while run.epoch < tc.epochs and not stopped_early:
            loader = run.loader(train_set)
            done_in_epoch = run.step - run.epoch * steps_per_epoch
            progress.update(bar, completed=done_in_epoch, description=f"epoch {run.epoch + 1}/{tc.epochs}")
            run.ddp_model.train()
            for k, batch in enumerate(loader):
                if k < done_in_epoch:
                    continue
                lr, loss, parts, gnorm = run.train_step(batch.to(dev), generator, tc.epochs * steps_per_epoch)
                if run.step % tc.log_every_steps == 0:
                    info = f"loss {float(loss.detach()):.3f} " + " ".join(
                        f"{k}={v:.3f}" for k, v in parts.items()
                    )
                    progress.update(bar, info=info + f" |g|={gnorm:.2f}")
                    if log is not None:
                        values = {"lr": lr, "loss": float(loss.detach()), **parts}
                        log.step(
                            run.step,
                            run.epoch,
                            {**values, "grad_norm": gnorm, "seconds": time.monotonic() - start},
                        )
                    if rank == 0 and not console.is_terminal:  # logs to a file get plain lines
                        console.print(f"epoch {run.epoch + 1} step {run.step}: {info} |g|={gnorm:.2f}")
                progress.advance(bar)
                if run.step % tc.checkpoint_every_steps == 0:
                    run.save(last_path)
                out_of_time = max_minutes is not None and time.monotonic() - start > 60 * max_minutes
                if (tc.max_steps is not None and run.step >= tc.max_steps) or out_of_time:
                    stopped_early = True
                    break
            if not stopped_early:
                run.epoch += 1
                if run.epoch % tc.eval_every_epochs == 0 or run.epoch == tc.epochs:
                    run.validate(val_set, best_path, log)
                run.save(last_path)
            elif tc.eval_on_stop and run.step > int(run.metrics.get("step", -1)):
                run.save(last_path)  # the resume point does not depend on the validation below
                run.validate(val_set, best_path, log)
    run.save(last_path)
    if log is not None:
        log.close()
    if rank == 0:
        why = "stopped (time/step limit)" if stopped_early else "finished"
        console.print(f"{why} at epoch {run.epoch}, step {run.step}; checkpoints in {out}")
    return best_path if best_path.is_file() else last_path


def compile_model(model: nn.Module) -> None:
    """``train.compile``: compile in place (``nn.Module.compile``), so parameters, state_dict
    keys and checkpoints stay those of the eager model."""
    hook = getattr(model, "compile_for_training", None)
    if hook is not None:
        hook()
    else:
        model.compile(dynamic=True)


def _evaluate(task: Task, model: nn.Module, ema: EMA, val_set: Dataset, rank: int) -> dict[str, Any]:
    """Validation with the EMA weights swapped in (restored afterwards)."""
    if rank != 0:
        return {}
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.shadow)
    model.eval()
    try:
        # fork_rng: a validation that samples (EQGAT) must not move the training run's RNG streams
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return task.evaluate(model, val_set)
    finally:
        model.load_state_dict(raw)
        model.train()
