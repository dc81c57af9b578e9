"""The one training loop of every neural detector, plus the two window families built on it.

Like PyOD's ``base_dl``: :class:`TorchDetector` owns device choice, seeding, batching, the epoch
loop (Adam, early stopping on validation loss, best-epoch restore and checkpoint, mixed precision on
CUDA, progress bar, history) and batched inference. A detector supplies only

- ``_build_module()``: its ``nn.Module``;
- ``_train_tensors(frame)``: its training samples, a tuple of tensors sharing the first axis;
- ``_loss(module, batch)``: a scalar, built on :func:`masked_mean` so interpolated points never count;
- ``_score_core(frame, causal)``: its scoring rule, usually through :meth:`TorchDetector._infer`
  (and, for ``causal=True``, :meth:`TorchDetector._infer_at_window_ends`);
- optionally ``_sampler(...)`` (the classifiers' class-balanced sampler).

:class:`WindowReconstructor` (the three autoencoders) and :class:`WindowClassifier` (the two
supervised classifiers) hold what those detectors share, so their files only declare a network.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, TensorDataset, WeightedRandomSampler

from models.base import Detector, SkipDetector, labels_of, observed_of, values_of
from models.configs.shared import ClassifierConfig, ReconstructorConfig, TorchConfig
from models.frame import kpi_slices
from models.windowing import (covering_windows_by_kpi, finite_window_scores, last_position, scores_at_window_ends,
                              spread_to_points, windows_by_kpi)

try:
    from tqdm.auto import tqdm
except ImportError:  # progress bars are a nicety; a bare GPU box may not have tqdm
    tqdm = None

Tensors = tuple[torch.Tensor, ...]
HOLDOUT_FRACTION = 0.1


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an explicit CUDA device must exist."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available here; use 'auto' or 'cpu'")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries whose 0/1 ``weights`` are 1 (0 when none are).

    ``torch.where`` rather than a product: an interpolated point may hold a huge or infinite value,
    and ``inf * 0`` is NaN.
    """
    weights = weights.to(values.dtype).expand_as(values)
    return torch.where(weights > 0, values, 0.0).sum() / weights.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    return masked_mean((pred.float() - target.float()).square(), observed)


def balanced_sampler(labels: np.ndarray, num_samples: int, generator: torch.Generator | None = None):
    """Draw windows so that each class present is seen equally often: weight = 1 / size of its class."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)


def evenly_spaced(tensors: Tensors, limit: int | None) -> Tensors:
    """At most ``limit`` samples, evenly spaced over all of them (first and last included; all when
    ``limit`` is None or not below their number). Samples are ordered by KPI then time, so every KPI
    and every part of the split stays represented, and the choice is the same every epoch and run."""
    n = len(tensors[0])
    if limit is None or n <= limit:
        return tensors
    pick = torch.from_numpy(np.linspace(0, n - 1, limit).round().astype(np.int64))
    return tuple(t[pick] for t in tensors)


def to_tensor(array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True)).to(dtype)  # copy: frames may hand out read-only views


def masked_windows(frame: pd.DataFrame, length: int, stride: int) -> Tensors:
    """Windows of the normalised values and of the observed (not missing) mask, as tensors."""
    slices = kpi_slices(frame)
    x, _ = windows_by_kpi(values_of(frame), slices, length, stride)
    observed, _ = windows_by_kpi(observed_of(frame), slices, length, stride)
    return to_tensor(x), to_tensor(observed)


class TorchDetector(Detector):
    config: TorchConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.device = resolve_device(self.train_config.device)
        self.module: nn.Module | None = None

    # -- hooks --------------------------------------------------------------------------------
    def _build_module(self) -> nn.Module:
        raise NotImplementedError

    def _train_tensors(self, frame: pd.DataFrame) -> Tensors:
        raise NotImplementedError

    def _loss(self, module: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _sampler(self, tensors: Tensors, num_samples: int, generator: torch.Generator) -> Sampler | None:
        return None

    # -- fit ----------------------------------------------------------------------------------
    def fit(self, train, val=None):
        seed_everything(self.train_config.seed)  # before the module exists: initial weights depend on it
        return super().fit(train, val)

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        self.module = self._build_module().to(self.device)
        val_tensors = self._train_tensors(val) if val is not None else None
        self._train_module(self.module, self._loss, self._train_tensors(train), val_tensors)

    def _train_module(self, module: nn.Module, loss_fn: Callable, train: Tensors, val: Tensors | None = None,
                      phase: str | None = None) -> None:
        """Adam + early stopping on validation loss; leaves ``module`` at its best epoch, in eval mode."""
        tc = self.train_config
        n = len(train[0])
        if n == 0:
            raise ValueError(f"{self.name}: the train split gives no training samples (is every KPI shorter "
                             f"than one window?)")
        if val is None or len(val[0]) == 0:
            # Samples are ordered by KPI then time, so this holds out the most recent ones, never a
            # shuffled subset that would leak neighbouring windows into validation.
            k = int(n * HOLDOUT_FRACTION) if n >= 10 else 0
            train, val = tuple(t[: n - k] for t in train), tuple(t[n - k:] for t in train)
        val = evenly_spaced(val, tc.max_val_windows)
        generator = torch.Generator().manual_seed(tc.seed)
        loader = self._loader(train, generator)
        epochs = min(tc.max_epochs, self.config.max_epochs or tc.max_epochs)
        optimizer = torch.optim.Adam(module.parameters(), lr=tc.learning_rate)
        amp_dtype = self._amp_dtype()
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)  # bf16 needs no scaling
        best_loss, best_state, stale = math.inf, None, 0
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            module.train()
            total, seen = torch.zeros((), device=self.device), 0
            for batch in self._progress(loader, f"{self.name}{'/' + phase if phase else ''} {epoch}/{epochs}"):
                batch = [t.to(self.device, non_blocking=True) for t in batch]
                with self._autocast(amp_dtype):
                    loss = loss_fn(module, batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.detach().float() * len(batch[0])  # no .item(): avoids a device sync per batch
                seen += len(batch[0])
            train_loss = float(total) / max(seen, 1)
            val_loss = self._evaluate(module, loss_fn, val, amp_dtype) if len(val[0]) else train_loss
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                      "seconds": time.perf_counter() - start}
            self.history.append(record | ({"phase": phase} if phase else {}))
            if val_loss < best_loss:
                best_loss, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                self._checkpoint(best_state, phase)
            else:
                stale += 1
                if stale >= tc.patience:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()

    def _loader(self, tensors: Tensors, generator: torch.Generator) -> DataLoader:
        n = len(tensors[0])
        draws = min(n, self.config.max_train_windows or n, self.train_config.max_train_windows or n)
        dataset = TensorDataset(*tensors)
        sampler = self._sampler(tensors, draws, generator)
        if sampler is None:  # a fresh random subset of `draws` samples every epoch
            sampler = RandomSampler(dataset, num_samples=draws, generator=generator)
        # A BatchSampler as the sampler with batch_size=None: each step indexes the tensors once with a
        # whole batch of indices, instead of fetching and collating samples one by one.
        return DataLoader(dataset, sampler=BatchSampler(sampler, self.train_config.batch_size, drop_last=False),
                          batch_size=None, num_workers=self.train_config.num_workers,
                          pin_memory=self.device.startswith("cuda"))

    @torch.inference_mode()
    def _evaluate(self, module: nn.Module, loss_fn: Callable, tensors: Tensors, amp_dtype) -> float:
        module.eval()
        total, n, size = 0.0, len(tensors[0]), self.config.score_batch_size
        for i in range(0, n, size):
            batch = [t[i:i + size].to(self.device) for t in tensors]
            with self._autocast(amp_dtype):
                total += float(loss_fn(module, batch)) * len(batch[0])
        return total / n

    def _amp_dtype(self):
        """Mixed precision only on CUDA: bf16 where supported (no loss scaling), else fp16 + GradScaler."""
        if not self.device.startswith("cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _autocast(self, dtype):
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _progress(self, loader, desc: str):
        if not self.train_config.progress or tqdm is None:
            return loader
        return tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)

    def _checkpoint(self, state: dict[str, torch.Tensor], phase: str | None) -> None:
        if self.train_config.checkpoint_dir:
            directory = Path(self.train_config.checkpoint_dir)
            directory.mkdir(parents=True, exist_ok=True)
            name = f"{self.name}-{phase}" if phase else self.name
            torch.save({k: v.cpu() for k, v in state.items()}, directory / f"{name}.best.pt")

    # -- inference and persistence ------------------------------------------------------------
    @torch.inference_mode()
    def _infer(self, fn: Callable[..., torch.Tensor], *arrays: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """``fn`` over aligned arrays (strided views are fine) in large batches, in fp32; numpy out."""
        self.module.eval()
        size = batch_size or self.config.score_batch_size
        outputs = []
        for i in range(0, len(arrays[0]), size):
            batch = [to_tensor(a[i:i + size]).to(self.device, non_blocking=True) for a in arrays]
            outputs.append(fn(*batch).float().cpu().numpy())
        out = np.concatenate(outputs)
        # Every input here is a full window: a NaN out of the network is broken weights, never "not covered".
        finite_window_scores(out, f"{self.name} network output(s)")
        return out

    def _infer_at_window_ends(self, values: np.ndarray, slices, length: int,
                              fn: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """Causal inference: row ``t`` gets ``fn`` of the stride-1 window of its KPI ending at ``t``
        (NaN before a KPI's first full window); batched by :meth:`_infer`, no copy of all the windows."""
        return scores_at_window_ends(values, slices, length, lambda view: self._infer(fn, view))

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module = self._build_module().to(self.device)
        self.module.load_state_dict(state)
        self.module.eval()


# -- autoencoders over windows ----------------------------------------------------------------

class WindowReconstructor(TorchDetector):
    """Autoencoders whose module maps windows ``(B, window)`` to ``(reconstruction (B, window), code (B, k))``.

    Loss: masked MSE over observed points, plus ``activity_l1 * mean_batch(sum |code|)`` when the
    config has a non-zero ``activity_l1`` (Keras' L1 activity regulariser). Score of a point: mean
    absolute reconstruction error over the scoring windows that cover it; causal (``causal=True``):
    the absolute reconstruction error of the point in the window that ends on it (its last position),
    from stride-1 windows ending at every row.
    """

    config: ReconstructorConfig

    def _train_tensors(self, frame: pd.DataFrame) -> Tensors:
        return masked_windows(frame, self.config.window, self.config.train_stride)

    def _loss(self, module: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        x, observed = batch
        recon, code = module(x)
        loss = masked_mse(recon, x, observed)
        l1 = getattr(self.config, "activity_l1", 0.0)
        return loss + l1 * code.float().abs().sum(-1).mean() if l1 else loss

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        length = self.config.window
        if causal:
            return self._infer_at_window_ends(
                values_of(frame), kpi_slices(frame), length,
                lambda x: (last_position(self.module(x)[0]).float() - last_position(x)).abs())
        windows, starts = covering_windows_by_kpi(values_of(frame), kpi_slices(frame), length, self.config.score_stride)
        if len(starts) == 0:
            return np.full(len(frame), np.nan)
        errors = self._infer(lambda x: (self.module(x)[0].float() - x).abs(), windows)
        return spread_to_points(errors, starts, len(frame), length)


# -- supervised classifiers over windows ------------------------------------------------------

class WindowClassifier(TorchDetector):
    """Supervised: module maps windows ``(B, window)`` to 2 logits; a window's label is its last point's.

    Training draws windows class-balanced (``max_train_windows`` draws per epoch) with noise
    augmentation; windows whose last point was interpolated are left out of the loss. Score of a
    point: P(anomaly) of the window that ends on it, which is causal already: ``causal=True`` takes
    the same path.
    """

    supervised = True
    config: ClassifierConfig

    def _train_tensors(self, frame: pd.DataFrame) -> Tensors:
        length = self.config.window
        x, starts = windows_by_kpi(values_of(frame), kpi_slices(frame), length)
        last = starts + length - 1
        return to_tensor(x), to_tensor(labels_of(frame)[last], torch.long), to_tensor(observed_of(frame)[last])

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        labels = self._train_tensors(train)[1]
        if not bool((labels == 1).any()):
            raise SkipDetector(f"{self.name} is supervised and no train window ends on a positive label; skipped")
        super()._fit_core(train, val)

    def _sampler(self, tensors: Tensors, num_samples: int, generator: torch.Generator) -> Sampler:
        return balanced_sampler(tensors[1].numpy(), num_samples, generator)

    def _loss(self, module: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y, observed = batch
        if module.training and self.config.noise_std > 0:
            x = x + self.config.noise_std * torch.randn_like(x)
        return masked_mean(F.cross_entropy(module(x).float(), y, reduction="none"), observed)

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        # The window ending at each row scores that row, in both modes: already causal.
        return self._infer_at_window_ends(values_of(frame), kpi_slices(frame), self.config.window,
                                          lambda x: torch.softmax(self.module(x).float(), dim=-1)[:, 1])
