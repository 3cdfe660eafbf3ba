#!/usr/bin/env python
"""Recreate the fold models of the shipped detector from its one ensemble graph.

The shipped ``src/defacer/models/detector.onnx`` is the mean of two networks (initializers
``members.0.*`` = foldA, ``members.1.*`` = foldB; the card's ``members``).  Each member's weights
are loaded into the project's own :class:`defacer.train.unet.AttentionUNet3D` and exported by the
project's own exporter, with a card that keeps the shipped box, class weights and mirror setting
and lists as ``trained_on`` the shipped heads minus that fold's held-out heads (docs/model-card.md,
"Folds"), so ``benchmarks/evaluate_detector.py --weights OUT/foldA.onnx OUT/foldB.onnx`` scores each
head with the member that never saw it.

Checks, before anything is written for good: every member weight is used, and the mean of the two
exported members' probabilities equals the shipped graph's on a real-sized random box.

Usage: ``python scripts/split_detector_members.py [--model src/defacer/models/detector.onnx] [--out build/folds]
[--force]`` (existing fold files are only replaced with ``--force``).  Written 2026-12-05: the fold files behind the
model card's held-out table were lost with the old machine; these reproduce its figures (docs/model-card.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: Heads each member never saw (docs/model-card.md, "The shipped model now (v3 ...)", Folds).
HELD_OUT = {
    "foldA": ["ixi012_T1w_2mm", "ixi014_T1w_2mm", "ixi033_T1w_2mm", "ixi039_T1w_2mm", "mricrogl_CT",
              "contecore2_mean_head_2mm"],
    "foldB": ["ixi013_T1w_2mm", "ixi015_T1w_2mm", "ixi034_T1w_2mm", "invesalius-ct0051_CT", "uih_T1w_dicom"],
}
#: Card entries of the shipped model copied into each member's card.
KEPT = ("box", "classes", "class_weights", "class_weights_note", "mirror", "training_data_licences")


def member_state(model_path: Path, index: int) -> dict:
    """``{name: tensor}`` of member ``index``'s initializers, named as the PyTorch network's state dict."""
    import onnx
    import torch
    from onnx import numpy_helper

    prefix = f"members.{index}.net."
    graph = onnx.load(str(model_path)).graph
    return {i.name[len(prefix):]: torch.from_numpy(numpy_helper.to_array(i).copy())
            for i in graph.initializer if i.name.startswith(prefix)}


def split(model_path: Path, out_dir: Path, force: bool = False) -> dict[str, Path]:
    """Write ``out_dir/foldA.onnx``, ``foldB.onnx`` (+ ``.json`` cards); returns their paths."""
    from defacer.files import file_sha256
    from defacer.io.atomic import write_text_atomic
    from defacer.train.export import _write
    from defacer.train.unet import AttentionUNet3D, SoftmaxUNet, UNetConfig

    card_path = model_path.with_suffix(".json")
    if not model_path.is_file() or not card_path.is_file():
        raise SystemExit(f"expected an ensemble ONNX file and its card at {model_path} and {card_path}, found "
                         f"{'neither' if not model_path.is_file() else 'no card'}: pass --model with the shipped "
                         "detector.onnx (its detector.json beside it)")
    card = json.loads(card_path.read_text())
    if len(card.get("members", [])) != len(HELD_OUT):
        raise SystemExit(f"{model_path} has {len(card.get('members', []))} members: expected {len(HELD_OUT)} "
                         "(foldA, foldB); pass --model with the shipped two-member detector.onnx")
    existing = [out_dir / f"{name}.{ext}" for name in HELD_OUT for ext in ("onnx", "json")
                if (out_dir / f"{name}.{ext}").exists()]
    if existing and not force:
        raise SystemExit(f"{existing[0]} exists: expected a folder without fold files; pass --force to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, (name, held_out) in enumerate(HELD_OUT.items()):
        member = card["members"][index]
        net = AttentionUNet3D(UNetConfig.from_dict(member["unet"]))
        net.load_state_dict(member_state(model_path, index), strict=True)  # every weight, none left over
        net.eval()
        path = out_dir / f"{name}.onnx"
        _write(SoftmaxUNet(net), path, card["box"])
        missing = [h for h in held_out if h not in card["trained_on"]]
        if missing:
            raise SystemExit(f"{model_path}'s card does not list {missing} among trained_on")
        sub = {k: card[k] for k in KEPT if k in card}
        sub.update({"format": "onnx", "opset": card.get("opset"), "file": path.name, "sha256": file_sha256(path),
                    "size_bytes": path.stat().st_size, "unet": member["unet"], "train": member["train"],
                    "best_epoch": member["best_epoch"], "val_dice": member["val_dice"],
                    "trained_on": [h for h in card["trained_on"] if h not in held_out], "held_out": held_out,
                    "split_from": {"file": str(model_path), "sha256": card.get("sha256"), "member": index,
                                   "by": "scripts/split_detector_members.py"}})
        write_text_atomic(path.with_suffix(".json"), json.dumps(sub, indent=1) + "\n")
        paths[name] = path
    _check(model_path, list(paths.values()), card["box"]["shape"])
    return paths


def _check(model_path: Path, members: list[Path], shape: list[int]) -> None:
    """Stop unless the mean of the members' probabilities is the shipped graph's (random box)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    box = np.random.default_rng(0).normal(size=(1, 1, *shape)).astype(np.float32)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"image": box})[0])

    whole = run(model_path)
    mean = sum(run(p) for p in members) / len(members)
    error = float(np.abs(mean - whole).max())
    print(f"mean of {len(members)} members against {model_path.name}: max |difference| {error:.2e}")
    if error > 1e-4:
        raise SystemExit(f"the members' mean differs from the shipped graph by {error:.2e}: expected below 1e-4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "src" / "defacer" / "models" / "detector.onnx")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "folds")
    parser.add_argument("--force", action="store_true", help="replace fold files already in --out")
    args = parser.parse_args()
    for name, path in split(args.model, args.out, args.force).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
