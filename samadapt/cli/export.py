"""``samadapt export ADAPTER --to {sam,onnx,hf,peft} --out PATH``: the options and the run function
of the subcommand (the exporters are :mod:`samadapt.exporters`)."""

from __future__ import annotations

import argparse
import json


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from ..exporters import FORMATS

    parser.add_argument("adapter", help="adapter name (samadapt list) or adapter file")
    parser.add_argument(
        "--to",
        required=True,
        choices=sorted(FORMATS),
        help="; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()),
    )
    parser.add_argument("--out", required=True, help="file (sam) or folder (onnx, hf, peft) to write")
    parser.add_argument("--checkpoint", help="the base checkpoint file, where samadapt.load would not find it")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--quantize",
        action="store_true",
        help="onnx: also write encoder_int8.onnx and decoder_int8.onnx (and encoder_rgb_int8.onnx "
        "with --rgb-encoder), onnxruntime's dynamic int8 quantisation",
    )
    parser.add_argument(
        "--rgb-encoder",
        action="store_true",
        help="onnx: also write encoder_rgb.onnx, which takes the resized RGB image (H, W, 3) and "
        "normalises and pads it itself (the input AnyLabeling / X-AnyLabeling feed)",
    )


def run_export(args: argparse.Namespace) -> int:
    from ..exporters import export

    out = export(
        args.adapter,
        to=args.to,
        out=args.out,
        force=args.force,
        checkpoint=args.checkpoint,
        quantize=args.quantize,
        rgb_encoder=args.rgb_encoder,
    )
    if out.is_dir():
        files = sorted(p for p in out.rglob("*") if p.is_file())
    else:
        files = [out, out.with_name(out.name + ".json")]
    for f in files:
        print(f"{f}  {f.stat().st_size / 1e6:.1f} MB")
    if args.to == "sam":
        from ..exporters.sam import how_to_load

        print(how_to_load(json.loads(files[-1].read_text())["model_type"], out))
    return 0
