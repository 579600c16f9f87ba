"""`mobile-vla export RUN --format onnx --out DIR`: a trained run as ONNX graphs for the robot's computer."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  mobile-vla export runs/case1 --format onnx --out exports/case1-onnx
  mobile-vla export models:/case2@champion --format onnx --out exports/champion --opset 18
  mobile-vla export runs/case4 --out exports/case4-int8 --precision int8     # dynamic int8 matrix products
  mobile-vla serve exports/case1-onnx --runtime onnx            # onnxruntime, same protocol and safety

  # on a Jetson, TensorRT from the same file (not run here; see README "Serving to the robot"):
  trtexec --onnx=exports/case1-onnx/vision.onnx --saveEngine=vision.plan --fp16 \\
          --minShapes=pixels:1x224x224x3 --optShapes=pixels:1x224x224x3 --maxShapes=pixels:8x224x224x3
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained run for another runtime (ONNX for onnxruntime / TensorRT)",
        description="Write the frozen backbone (vision and text graphs) and the trained head of RUN as ONNX "
        "(opset >= 17, dynamic batch) plus model.json (preprocessing, action axes, velocity limits, "
        "fingerprints) and the tokenizer. The export checks itself: onnxruntime must reproduce PyTorch's "
        "actions within --tolerance on --verify-frames frames (and, for history heads, stepped as one "
        "episode), else nothing is written. Supported: every case on the lite backbone: case1/case3, case2 "
        "with the reference embedding efficientnet-lite0 as its frozen CLIP (the vision graph's pooled "
        "output), case4 (the runtime keeps the frame history); continuous and key-class heads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run directory or registry address models:/NAME@ALIAS")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (must be empty or absent)")
    p.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="head weights (default best)"
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="fp32 (default) or int8: onnxruntime's dynamic int8 quantisation of the head graph's matrix "
        "products (MatMul/Gemm) after the fp32 export; its parity is checked with a looser default --tolerance (0.1)",
    )
    p.add_argument(
        "--verify-frames", type=int, default=16, help="frames compared against PyTorch (0: skip; default 16)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest |action difference| from PyTorch (default 1e-4 for fp32, 0.1 for int8)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print model.json")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobile_vla.export.onnx import export_onnx

    sidecar = export_onnx(
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        opset=args.opset,
        precision=args.precision,
        verify_frames=args.verify_frames,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(sidecar, indent=2))
    else:
        check = sidecar.get("verification") or {}
        files = ", ".join(g["file"] for g in sidecar["graphs"].values())
        parity = (
            f"; onnxruntime vs PyTorch max |diff| {check['max_abs_diff']:.2e} on {check['n']} frames"
            if check
            else ""
        )
        print(f"{args.out}: {files}, model.json (opset {sidecar['opset']}, {sidecar['precision']}){parity}")
    return 0
