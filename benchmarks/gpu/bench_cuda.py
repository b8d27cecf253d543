"""The CUDA backend against the GPU's ceilings and torch, on one GPU.

    python -m benchmarks.gpu.bench_cuda --out DIR

Measures, in one run: the device-to-device copy bandwidth (the ceiling of elementwise work);
an elementwise chain over 64M floats (achieved GB/s, 16-byte vector loads); the host cost of
one MLP step's launches, replayed as a CUDA graph against the launch list; float32 matmul
4096^3 by the generated kernels (SIMT fp32, TF32 and bf16 tensor cores; tiles autotuned) against
torch's cuBLAS (TF32 off, TF32 on, bf16); the MLP (batch 256) and ResNet9
(batch 128) training steps, jitted (the generated kernels replayed, GPU time by CUDA events)
against torch eager on the same GPU. Writes `bench.json` and `RESULTS-gpu.md` (a section for
benchmarks/RESULTS.md) under DIR. Needs pycuda, a GPU and torch built for CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np


def _graph_time(graph, arrays, repeats: int, info: dict | None = None) -> float:
    from needlec.codegen.cuda.runtime import CudaExecutable
    from needlec.passes import compile_program

    ex = CudaExecutable(compile_program(graph))
    ex.run(arrays)
    if info is not None:
        info["vector_loads"] = "float4" in ex.source
    return ex.time(repeats)


def elementwise(n: int, repeats: int) -> dict:
    from needlec.ir import Graph, Node, Op

    x = Node.leaf(Op.INPUT, "float32", (n,), ("arg", 0))
    y = Node.leaf(Op.INPUT, "float32", (n,), ("arg", 1))
    out = ((x * 2.0 + 1.0).relu() * y - x) * 0.5  # reads 2, writes 1 float per element
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(n).astype("float32") for _ in range(2)]
    info: dict = {}
    t = _graph_time(Graph([x, y], [out]), arrays, repeats, info)
    return {"n": n, "seconds": t, "bytes_per_s": 3 * 4 * n / t, **info}


def matmul(n: int, repeats: int) -> dict:
    """n^3 float32 matmul: the generated kernel of each kind (NEEDLEC_CUDA_MATMUL simt, tf32,
    bf16; tiles from the autotuner) against torch's cuBLAS with TF32 off and on, and in bf16."""
    import os

    import torch

    from needlec.codegen.cuda import autotune, runtime
    from needlec.codegen.cuda.runtime import CudaExecutable
    from needlec.ir import Graph, Node, Op
    from needlec.passes import compile_program

    a = Node.leaf(Op.INPUT, "float32", (n, n), ("arg", 0))
    b = Node.leaf(Op.INPUT, "float32", (n, n), ("arg", 1))
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, n)).astype("float32") for _ in range(2)]
    flops = 2 * n**3
    program = compile_program(Graph([a, b], [a @ b]))
    want = arrays[0][:64].astype(np.float64) @ arrays[1].astype(np.float64)
    out: dict = {"n": n}
    before = os.environ.get("NEEDLEC_CUDA_MATMUL")
    try:
        for mode in autotune.MODES:
            os.environ["NEEDLEC_CUDA_MATMUL"] = mode
            ex = CudaExecutable(program)
            (got,) = ex.run(arrays)
            out[f"ours_{mode}_flops"] = flops / ex.time(repeats)
            # the largest error of 64 rows against float64, relative to the largest |value|
            out[f"ours_{mode}_error"] = float(np.abs(got[:64] - want).max() / np.abs(want).max())
            problem = autotune.problem_of(
                program.kernels.kernels[0].core, mode, runtime.architecture()
            )
            tiles = autotune.load(problem) or autotune.heuristic(problem)
            out[f"ours_{mode}_tiles"] = f"{tiles.bm}x{tiles.bn}x{tiles.bk}/{tiles.tm}x{tiles.tn}"
            ex.close()
    finally:
        if before is None:
            os.environ.pop("NEEDLEC_CUDA_MATMUL", None)
        else:
            os.environ["NEEDLEC_CUDA_MATMUL"] = before
    out["ours_fp32_flops"] = out["ours_simt_flops"]

    def torch_rate(dtype, tf32: bool) -> float:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x, y = (torch.from_numpy(v).cuda().to(dtype) for v in arrays)
        torch.matmul(x, y)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            torch.matmul(x, y)
        end.record()
        end.synchronize()
        return flops / (start.elapsed_time(end) / 1e3 / repeats)

    out["cublas_fp32_flops"] = torch_rate(torch.float32, False)
    out["cublas_tf32_flops"] = torch_rate(torch.float32, True)
    out["cublas_bf16_flops"] = torch_rate(torch.bfloat16, False)
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def _step_program(name: str):
    """The optimized program of training step `name` and random inputs for it."""
    import needlec as nc
    from benchmarks import steps
    from benchmarks.bench_train_step import make_step
    from needlec import nn, optim

    s = steps.spec(name)
    np.random.seed(s.seed)
    model = s.build()
    opt = optim.SGD(model.parameters(), lr=steps.LR, momentum=steps.MOMENTUM)
    x, y = s.batch(np.random.default_rng(s.seed + 1))
    step = nc.jit(make_step(model, opt, nn.SoftmaxLoss()))
    program = step.lower(nc.Tensor(x), nc.Tensor(y)).program
    rng = np.random.default_rng(0)
    arrays = [
        rng.uniform(0.1, 1.0, b.shape).astype(b.dtype)
        if b.dtype.startswith("float")
        else rng.integers(0, 2**31, b.shape).astype(b.dtype)
        for b in program.kernels.inputs
    ]
    return program, arrays


def host_cost(name: str, repeats: int) -> dict:
    """Host seconds to issue one step's launches (no transfers, no waiting): the step replayed
    as a CUDA graph against its launch list, one driver call a launch."""
    from needlec.codegen.cuda.runtime import CudaExecutable

    program, arrays = _step_program(name)
    out: dict = {"step": name}
    for key, graphs in (("graph", True), ("list", False)):
        ex = CudaExecutable(program, graphs=graphs)
        ex.run(arrays)
        best = float("inf")
        for _ in range(5):
            ex.stream.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                ex.launch()
            best = min(best, (time.perf_counter() - t0) / repeats)
            ex.stream.synchronize()
        out[f"{key}_host_seconds"] = best
        out[f"{key}_gpu_seconds"] = ex.time(repeats)
        out["launches"] = sum(1 for kind, _ in ex.launches if kind == "device")
        if graphs:
            out["graph_launches"] = sum(1 for kind, _ in (ex._replay or []) if kind == "graph")
        ex.close()
    return out


def training_step(name: str, repeats: int) -> dict:
    """The step's generated kernels replayed on the GPU, against torch eager on the GPU."""
    import torch

    import needlec as nc
    from benchmarks import peers, steps
    from benchmarks.bench_train_step import make_step
    from needlec import nn, optim
    from needlec.codegen.cuda.runtime import CudaExecutable

    s = steps.spec(name)
    np.random.seed(s.seed)
    model = s.build()
    init = [p.numpy().copy() for p in model.parameters()]
    opt = optim.SGD(model.parameters(), lr=steps.LR, momentum=steps.MOMENTUM)
    x, y = s.batch(np.random.default_rng(s.seed + 1))
    step = nc.jit(make_step(model, opt, nn.SoftmaxLoss()))
    lowered = step.lower(nc.Tensor(x), nc.Tensor(y))
    program = lowered.program
    ex = CudaExecutable(program)
    rng = np.random.default_rng(0)
    arrays = [
        rng.uniform(0.1, 1.0, b.shape).astype(b.dtype)
        if b.dtype.startswith("float")
        else rng.integers(0, 2**31, b.shape).astype(b.dtype)
        for b in program.kernels.inputs
    ]
    ex.run(arrays)
    jit_s = ex.time(repeats)
    runner = peers.torch_runner(model, init, x, y, compiled=False, device="cuda")
    for _ in range(3):
        runner.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        runner.step()
    torch.cuda.synchronize()
    torch_s = (time.perf_counter() - t0) / repeats
    return {
        "step": name,
        "kernels": len(program.kernels.kernels),
        "launches": sum(1 for kind, _ in ex.launches if kind == "device"),
        "jit_gpu_seconds": jit_s,
        "torch_eager_seconds": torch_s,
        "cuda_eager_seconds": None,  # eager CUDA (a kernel per op) is not built yet
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--elements", type=int, default=64 << 20)
    ap.add_argument("--matmul", type=int, default=4096)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import pycuda.driver as drv

    from needlec.codegen.cuda import runtime

    runtime.context()
    results: dict = {
        "device": drv.Context.get_device().name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "nvcc": runtime.nvcc_version(),
    }

    def save() -> None:
        (args.out / "bench.json").write_text(json.dumps(results, indent=2))

    results["copy_bytes_per_s"] = runtime.copy_bandwidth(1 << 30, args.repeats)
    save()
    for key, fn in (
        ("elementwise", lambda: elementwise(args.elements, args.repeats)),
        ("host_cost", lambda: host_cost("mlp-784-256-10-b256", args.repeats)),
        ("matmul", lambda: matmul(args.matmul, max(3, args.repeats // 4))),
        ("mlp", lambda: training_step("mlp-784-256-10-b256", args.repeats)),
        ("resnet9", lambda: training_step("resnet9-b128", max(3, args.repeats // 4))),
    ):
        try:
            results[key] = fn()
        except Exception as err:  # one failed row must not lose the others
            results[key] = {"error": f"{type(err).__name__}: {err}"}
        save()
        print(key, json.dumps(results[key]), flush=True)
    (args.out / "RESULTS-gpu.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    """The section for benchmarks/RESULTS.md."""
    gbs = lambda v: f"{v / 1e9:,.0f} GB/s"
    tf = lambda v: f"{v / 1e12:,.1f} TFLOP/s"
    lines = [f"## CUDA backend on {r['device']} ({r['date']}, {r['nvcc']})", ""]
    copy = r["copy_bytes_per_s"]
    lines.append(f"- device-to-device copy (1 GiB): {gbs(copy)} (read + write)")
    e = r.get("elementwise", {})
    if "bytes_per_s" in e:
        lines.append(
            f"- elementwise chain, {e['n']:,} floats: {e['seconds'] * 1e3:.3f} ms, "
            f"{gbs(e['bytes_per_s'])} = {e['bytes_per_s'] / copy:.0%} of the copy (target 85%)"
            + (", float4 loads" if e.get("vector_loads") else ", scalar loads")
        )
    h = r.get("host_cost", {})
    if "graph_host_seconds" in h:
        lines.append(
            f"- {h['step']} host cost per step: CUDA graph {h['graph_host_seconds'] * 1e6:.1f} us "
            f"({h['graph_launches']} graph launches) vs launch list "
            f"{h['list_host_seconds'] * 1e6:.1f} us ({h['launches']} launches); GPU time "
            f"{h['graph_gpu_seconds'] * 1e3:.3f} ms vs {h['list_gpu_seconds'] * 1e3:.3f} ms"
        )
    m = r.get("matmul", {})
    if "ours_fp32_flops" in m:
        for mode, peer, target in (
            ("simt", "fp32", "70% of cuBLAS fp32, TF32 off"),
            ("tf32", "tf32", "within 2x of cuBLAS TF32"),
            ("bf16", "bf16", "within 2x of cuBLAS bf16"),
        ):
            ours, theirs = m[f"ours_{mode}_flops"], m[f"cublas_{peer}_flops"]
            lines.append(
                f"- matmul {m['n']}^3, generated {mode} kernel (tiles {m[f'ours_{mode}_tiles']}): "
                f"{tf(ours)} = {ours / theirs:.0%} of cuBLAS {peer} {tf(theirs)} (target "
                f"{target}); max error {m[f'ours_{mode}_error']:.1e} of the largest |value|"
            )
    for key in ("mlp", "resnet9"):
        s = r.get(key, {})
        if "jit_gpu_seconds" in s:
            lines.append(
                f"- {s['step']}: jit {s['jit_gpu_seconds'] * 1e3:.2f} ms GPU time "
                f"({s['kernels']} kernels, {s['launches']} launches), torch eager "
                f"{s['torch_eager_seconds'] * 1e3:.2f} ms: "
                f"{s['torch_eager_seconds'] / s['jit_gpu_seconds']:.2f}x torch's speed "
                "(target within 1.5x); CUDA eager not built"
            )
    for key in ("elementwise", "host_cost", "matmul", "mlp", "resnet9"):
        if "error" in r.get(key, {}):
            lines.append(f"- {key}: failed: {r[key]['error']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
