"""ResNet9's convolutions on the GPU: the generated implicit-GEMM kernels against torch's cuDNN.

    python -m benchmarks.gpu.bench_conv --out DIR [--batch 128] [--repeats 20]
    python -m benchmarks.gpu.bench_conv --source-only     # no GPU: render and list the kernels

Each distinct convolution of ResNet9 (32 x 32 inputs; the stem reads its NCHW input through a
permute, as the traced step does) at the given batch, forward and both gradients, each as a
one-core program replayed by `CudaExecutable` (GPU time by CUDA events, median of `repeats`),
against torch's conv2d and convolution_backward on the same GPU (cuDNN, NCHW, TF32 off and on).
Each row also records the largest difference from torch's fp32 result, relative to the largest
magnitude. Writes `conv.json` and `RESULTS-conv.md` (a section for benchmarks/RESULTS.md) under DIR.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np

# ResNet9's distinct convolutions: (name, Cin, Cout, kernel, stride, input side), padding k // 2
LAYERS = [
    ("stem 3-16 k7 s4", 3, 16, 7, 4, 32),
    ("16-32 k3 s2", 16, 32, 3, 2, 8),
    ("32-32 k3 s1", 32, 32, 3, 1, 4),
    ("32-64 k3 s2", 32, 64, 3, 2, 4),
    ("64-128 k3 s2", 64, 128, 3, 2, 2),
    ("128-128 k3 s1", 128, 128, 3, 1, 1),
]
OPS = ("forward", "input_grad", "weight_grad")


def graphs(batch: int, cin: int, cout: int, k: int, stride: int, side: int, nchw: bool) -> dict:
    """op -> (graph, its inputs as (shape, role)) of one convolution: the forward conv of x by
    w, and its two gradients for an output gradient g (all NHWC; x held NCHW where `nchw`)."""
    from needlec.ir import Graph, Node, Op

    pad = k // 2
    out = (side + 2 * pad - k) // stride + 1
    x_shape = (batch, cin, side, side) if nchw else (batch, side, side, cin)
    x = Node.leaf(Op.INPUT, "float32", x_shape, ("arg", 0))
    xv = x.permute((0, 2, 3, 1)) if nchw else x
    w = Node.leaf(Op.INPUT, "float32", (k, k, cin, cout), ("arg", 1))
    g = Node.leaf(Op.INPUT, "float32", (batch, out, out, cout), ("arg", 2))
    return {
        "forward": (Graph([x, w], [xv.conv(w, stride, pad)]), ("x", "w")),
        "input_grad": (
            Graph([g, w], [g.conv_input_grad(w, stride, pad, (side, side))]),
            ("g", "w"),
        ),
        "weight_grad": (Graph([x, g], [xv.conv_weight_grad(g, stride, pad, (k, k))]), ("x", "g")),
    }


def _torch_time(fn, repeats: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def executables(batch: int) -> dict:
    """(layer name, op) -> (executable, input roles): every program compiled as one module
    (one nvcc call)."""
    import pycuda.driver as drv

    from needlec.codegen.cuda.program import header, render_program
    from needlec.codegen.cuda.runtime import CudaExecutable, compile_source
    from needlec.passes import compile_program

    found = []
    for name, cin, cout, k, stride, side in LAYERS:
        gs = graphs(batch, cin, cout, k, stride, side, name.startswith("stem"))
        found += [((name, op), compile_program(g), roles) for op, (g, roles) in gs.items()]
    parts = [header()]
    parts += [
        render_program(p.kernels, prefix=f"b{j}_", with_header=False).source
        for j, (_, p, _) in enumerate(found)
    ]
    module = drv.module_from_buffer(compile_source("\n".join(parts)))
    return {
        key: (CudaExecutable(p, prefix=f"b{j}_", module=module), roles)
        for j, (key, p, roles) in enumerate(found)
    }


def layer(batch: int, spec: tuple, repeats: int, exes: dict) -> list[dict]:
    """The three convolutions of one layer: ours and torch's times, flops, and the difference."""
    import torch

    name, cin, cout, k, stride, side = spec
    nchw = name.startswith("stem")
    pad = k // 2
    out = (side + 2 * pad - k) // stride + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, side, side)).astype("float32")  # NCHW
    w = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype("float32")
    g = rng.standard_normal((batch, out, out, cout)).astype("float32")
    held = {"x": x if nchw else np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "w": w, "g": g}
    flops = 2 * batch * out * out * cout * k * k * cin
    tx = torch.from_numpy(x).cuda()
    tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).cuda()  # OIHW
    tg = torch.from_numpy(np.ascontiguousarray(g.transpose(0, 3, 1, 2))).cuda()

    def torch_op(op: str):
        if op == "forward":
            return lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad)
        mask = [op == "input_grad", op == "weight_grad", False]
        return lambda: torch.ops.aten.convolution_backward(
            tg, tx, tw, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask
        )[0 if op == "input_grad" else 1]

    def as_ours(op: str, t) -> np.ndarray:  # torch's NCHW / OIHW result in our NHWC / HWIO
        return t.permute(0, 2, 3, 1) if op != "weight_grad" else t.permute(2, 3, 1, 0)

    rows = []
    for op in OPS:
        ex, roles = exes[name, op]
        (ours,) = ex.run([held[r] for r in roles])
        seconds = ex.time(repeats)
        row = {"layer": name, "op": op, "batch": batch, "flops": flops, "seconds": seconds}
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = tf32
            row[f"cudnn_{'tf32' if tf32 else 'fp32'}_seconds"] = _torch_time(torch_op(op), repeats)
        torch.backends.cudnn.allow_tf32 = False
        want = as_ours(op, torch_op(op)()).cpu().numpy()
        row["max_rel_diff"] = float(np.max(np.abs(ours - want)) / max(np.max(np.abs(want)), 1e-30))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def source_only(batch: int) -> None:
    """Render every kernel (no GPU needed) and list its launches."""
    from needlec.codegen.cuda.program import render_program
    from needlec.passes import compile_program

    for name, cin, cout, k, stride, side in LAYERS:
        gs = graphs(batch, cin, cout, k, stride, side, name.startswith("stem"))
        for op, (graph, _) in gs.items():
            cuda = render_program(compile_program(graph).kernels)
            launches = [f"{x.grid}x{x.block}" for ck in cuda.kernels for x in ck.launches]
            print(f"{name:16} {op:12} {' '.join(launches)}")


def markdown(r: dict) -> str:
    """The section for benchmarks/RESULTS.md."""
    lines = [
        f"## ResNet9 convolutions on {r['device']} ({r['date']}), batch {r['batch']}",
        "",
        "GPU time per convolution (median of CUDA-event timings); cuDNN through torch, NCHW.",
        "",
        "| layer | op | ours ms | TFLOP/s | cuDNN fp32 ms | cuDNN / ours | cuDNN TF32 ms | rel diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    total = {"ours": 0.0, "fp32": 0.0, "tf32": 0.0}
    for x in r["rows"]:
        if "error" in x:
            lines.append(f"| {x['layer']} | failed: {x['error']} | | | | | | |")
            continue
        total["ours"] += x["seconds"]
        total["fp32"] += x["cudnn_fp32_seconds"]
        total["tf32"] += x["cudnn_tf32_seconds"]
        lines.append(
            f"| {x['layer']} | {x['op']} | {x['seconds'] * 1e3:.3f} | "
            f"{x['flops'] / x['seconds'] / 1e12:.1f} | {x['cudnn_fp32_seconds'] * 1e3:.3f} | "
            f"{x['cudnn_fp32_seconds'] / x['seconds']:.2f} | {x['cudnn_tf32_seconds'] * 1e3:.3f} | "
            f"{x['max_rel_diff']:.1e} |"
        )
    if total["ours"]:
        lines.append(
            f"| all | | {total['ours'] * 1e3:.3f} | | {total['fp32'] * 1e3:.3f} | "
            f"{total['fp32'] / total['ours']:.2f} | {total['tf32'] * 1e3:.3f} | |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--source-only", action="store_true", help="render the kernels; no GPU")
    args = ap.parse_args(argv)
    if args.source_only:
        source_only(args.batch)
        return
    if args.out is None:
        ap.error("--out is required (unless --source-only)")
    args.out.mkdir(parents=True, exist_ok=True)
    import pycuda.driver as drv

    from needlec.codegen.cuda import runtime

    runtime.context()
    results: dict = {
        "device": drv.Context.get_device().name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "batch": args.batch,
        "rows": [],
    }
    exes = executables(args.batch)
    for spec in LAYERS:
        try:
            results["rows"] += layer(args.batch, spec, args.repeats, exes)
        except Exception as err:  # one failed layer must not lose the others
            results["rows"].append({"layer": spec[0], "error": f"{type(err).__name__}: {err}"})
        (args.out / "conv.json").write_text(json.dumps(results, indent=2))
    (args.out / "RESULTS-conv.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
