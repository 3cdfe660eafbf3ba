"""Training loop: loss 1 - Dice + 0.1 x cross-entropy, validation Dice every epoch, early stopping.

Checkpoints (``best.pt``, ``last.pt``) hold the weights, the :class:`TrainConfig`, the
:class:`~defacer.train.unet.UNetConfig` and the validation history, so any checkpoint can be
exported or resumed alone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defacer.errors import DefacerError
from defacer.labels import NUM_CLASSES
from defacer.train.data import AugmentedBatches, BoxSample, training_transform
from defacer.train.unet import AttentionUNet3D, UNetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (stored in every checkpoint).

    Attributes
    ----------
    epochs : int
        Upper bound on epochs.
    samples_per_epoch : int
        Augmented draws per epoch.
    batch_size : int
    learning_rate : float
        Adam learning rate.
    patience : int
        Stop after this many epochs without a better validation Dice.
    ce_weight : float
        Weight of the cross-entropy term (loss = 1 - Dice + ce_weight * CE).
    real_weight : float
        Sampling weight of a real head relative to a phantom.
    transpose_probability : float
        Probability of a random axis transpose per draw.
    time_limit_s : float
        Stop after this much wall time (0: no limit).
    seed : int
    threads : int
        ``torch.set_num_threads`` on CPU.
    patch : int
        Train on cubes of this many voxels cut from each augmented box (0: the whole box).  The
        network is fully convolutional, so it still runs on the whole box; a 64^3 patch costs a
        third of a 96^3 box, which is what makes CPU training affordable.
    foreground_probability : float
        With ``patch``, the chance that a patch is centred on a voxel of a feature (drawn per
        class with ``patch_class_weights``) rather than anywhere in the box.
    patch_class_weights : tuple of float
        Relative chance of centring a foreground patch on the eyes, nose and ears.
    bright_background : bool
        Augment with a lifted background and a wider gamma
        (:func:`~defacer.train.data.training_transform`); off in the shipped recipe.
    """

    epochs: int = 60
    samples_per_epoch: int = 48
    batch_size: int = 2
    learning_rate: float = 2e-3
    patience: int = 5
    ce_weight: float = 0.1
    real_weight: float = 3.0
    transpose_probability: float = 0.1
    time_limit_s: float = 0.0
    seed: int = 0
    threads: int = 2
    patch: int = 0
    foreground_probability: float = 0.7
    patch_class_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)
    bright_background: bool = False
    unet: dict = field(default_factory=lambda: UNetConfig().to_dict())


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - mean soft Dice`` over the feature classes (1..C-1), pooled over the batch.

    Parameters
    ----------
    logits : Tensor, shape (N, C, X, Y, Z)
    target : Tensor, shape (N, X, Y, Z), int64
    """
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice[1:].mean()


def total_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float) -> torch.Tensor:
    """``1 - Dice + ce_weight * cross-entropy`` (the paper's loss)."""
    return dice_loss(logits, target) + ce_weight * F.cross_entropy(logits, target)


def hard_dice(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    """Dice per feature class of two label maps; classes absent from both are left out."""
    out = {}
    for c in range(1, NUM_CLASSES):
        p, r = pred == c, ref == c
        if not p.any() and not r.any():
            continue
        out[c] = float(2 * np.logical_and(p, r).sum() / (p.sum() + r.sum()))
    return out


@torch.no_grad()
def evaluate_box(net: AttentionUNet3D, samples: list[BoxSample], device: torch.device) -> float:
    """Mean hard Dice over classes and samples, on the box grid (no augmentation)."""
    net.eval()
    scores = []
    for s in samples:
        x = torch.from_numpy(s.image[None, None]).to(device)
        pred = net(x).argmax(1)[0].cpu().numpy()
        d = hard_dice(pred, s.labels)
        if d:
            scores.append(float(np.mean(list(d.values()))))
    return float(np.mean(scores)) if scores else 0.0


def train(train_samples: list[BoxSample], val_samples: list[BoxSample], out_dir: Path,
          config: TrainConfig = TrainConfig(), resume: Path | None = None) -> Path:
    """Train a detector; returns the path of the best checkpoint.

    Parameters
    ----------
    train_samples, val_samples : list of BoxSample
        Training and validation heads (validation must not share a subject with training).
    out_dir : Path
        Checkpoints and ``history.json`` go here.
    config : TrainConfig
    resume : Path, optional
        Start from the weights of this checkpoint (same architecture); its history is kept.  An
        exported ``.onnx`` detector (e.g. the shipped one) works too: its weights are loaded by
        :func:`defacer.train.warm_start.load_onnx_weights`.
    """
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(config.threads)
    net = AttentionUNet3D(UNetConfig.from_dict(config.unet)).to(device)
    previous: list[dict] = []
    if resume is not None and resume.suffix == ".onnx":
        from defacer.train.warm_start import load_onnx_weights

        load_onnx_weights(net, resume)
        previous = [{"resumed_from": str(resume)}]
    elif resume is not None:
        state = read_checkpoint(resume)
        net.load_state_dict(state["model"])
        previous = [dict(h, resumed_from=str(resume)) for h in state.get("history", [])]
    out_dir.mkdir(parents=True, exist_ok=True)  # once the starting weights have been read
    weights = [config.real_weight if s.group != "phantom" else 1.0 for s in train_samples]
    shape = tuple(int(n) for n in train_samples[0].image.shape)
    box = {"shape": list(shape), "spacing_mm": float(np.sqrt((train_samples[0].affine[:3, :3] ** 2).sum(axis=0))[0])}
    transform = training_transform(config.transpose_probability, device, shape,  # type: ignore[arg-type]
                                   config.bright_background)
    batches = AugmentedBatches(train_samples, transform, weights, device=device, seed=config.seed, patch=config.patch,
                               foreground_probability=config.foreground_probability,
                               class_weights=config.patch_class_weights)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    # halve the learning rate after 2 epochs without a better validation Dice (early stopping waits 5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    history: list[dict] = list(previous)
    best, best_epoch, start = -1.0, -1, time.monotonic()
    best_path = out_dir / "best.pt"
    steps = max(1, config.samples_per_epoch // config.batch_size)
    for epoch in range(config.epochs):
        net.train()
        losses: list[float] = []
        for _ in range(steps):
            if config.time_limit_s and time.monotonic() - start > config.time_limit_s and losses:
                break  # the time limit also ends an epoch early; it is then validated and saved as usual
            image, target = batches.batch(config.batch_size)
            optimizer.zero_grad()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = net(image)
            loss = total_loss(logits.float(), target, config.ce_weight)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        val = evaluate_box(net, val_samples, device) if val_samples else 1.0 - float(np.mean(losses))
        scheduler.step(val)
        history.append({"epoch": len(history), "samples": config.samples_per_epoch, "loss": float(np.mean(losses)), "val_dice": val,
                        "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.monotonic() - start, 1)})
        logger.info("epoch %d loss %.4f val_dice %.4f", epoch, history[-1]["loss"], val)
        print(json.dumps(history[-1]), flush=True)
        state = {"model": net.state_dict(), "unet": config.unet, "train": asdict(config), "history": history,
                 "epoch": epoch, "val_dice": val, "box": box}
        torch.save(state, out_dir / "last.pt")
        if val > best:
            best, best_epoch = val, epoch
            torch.save(state, best_path)
        if epoch - best_epoch >= config.patience:
            logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
        if config.time_limit_s and time.monotonic() - start > config.time_limit_s:
            logger.info("time limit reached at epoch %d", epoch)
            break
    (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return best_path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state a checkpoint written by :func:`train` holds (``best.pt``, ``last.pt``).

    Read with ``weights_only=True``: tensors, numbers, strings and containers only, so a hostile
    file cannot run code when it is loaded (a full unpickling could).

    Raises
    ------
    defacer.errors.DefacerError
        The file is missing, unreadable, or not such a checkpoint, saying what to pass instead.
    """
    redo = "Pass a best.pt or last.pt from the --out folder of 'defacer train'."
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise DefacerError(f"No checkpoint at '{path}'. {redo}") from err
    except Exception as err:  # torch raises pickle, zip and its own errors for files it cannot read
        raise DefacerError(f"'{path}' is not a checkpoint written by 'defacer train' (torch could not read it as one: "
                           f"{type(err).__name__}: {str(err)[:200]}). {redo}") from err
    if not isinstance(state, dict) or not {"model", "unet"} <= state.keys():
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise DefacerError(f"'{path}' is not a checkpoint written by 'defacer train': expected the keys 'model' and "
                           f"'unet', found {found}. {redo}")
    return state


def load_checkpoint(path: Path) -> AttentionUNet3D:
    """Rebuild the network of a checkpoint written by :func:`train` (CPU, eval mode)."""
    return network_from_state(read_checkpoint(path))


def network_from_state(state: dict) -> AttentionUNet3D:
    """The network of an already loaded checkpoint dictionary (CPU, eval mode)."""
    net = AttentionUNet3D(UNetConfig.from_dict(state["unet"]))
    net.load_state_dict(state["model"])
    net.eval()
    return net
