"""A kernel's scratch (packed operands, im2col columns, accumulators kept across loops) is part
of the memory plan: one block per kernel in the arena, live during that kernel alone, with a
copy per chunk where a parallel convolution's tasks each need their own. A step allocates
nothing: no workspace of its own, no malloc in the generated code."""

import os

import numpy as np
import pytest

import needlec as nc
from needlec.codegen.llvm import runtime

compiled_only = pytest.mark.skipif(
    os.environ.get("NEEDLEC_EXECUTE", "compiled") != "compiled",
    reason="scratch placement is the compiled backend's",
)


def _conv_step():
    def f(x, w):
        y = nc.ops.conv(x, w, stride=1, padding=1)
        return nc.ops.summation(y * y)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 32, 32, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 32)).astype(np.float32) * 0.1
    return nc.jit(nc.value_and_grad(f, argnums=(0, 1))), x, w


@compiled_only
def test_scratch_blocks_are_planned_in_the_arena():
    step, x, w = _conv_step()
    ex = step.lower(nc.Tensor(x), nc.Tensor(w)).executable
    plan = ex.plan
    blocks = [b for b in plan.live if b.kind == "scratch"]
    assert blocks, "the convolutions need scratch"
    for b in blocks:
        first, last = plan.live[b]
        assert first == last  # live during its own kernel alone
        assert plan.offsets[b] + b.nbytes <= ex.arena_bytes
        parts = plan.scratch_parts[b]
        assert sum(-(-p.nbytes // 64) * 64 * n for p, _, n in parts) <= b.nbytes
    # the parallel convolutions' column buffers: one copy per chunk of image tiles
    copies = [n for b in blocks for p, _, n in plan.scratch_parts[b] if p.name.endswith(".col")]
    assert max(copies) > 1
    assert not hasattr(ex, "workspace_bytes")
    source = ex.source("llvm-unoptimized")
    assert "@malloc" not in source and "@free" not in source
    text = plan.as_text()
    assert "scratch" in text and ".col at +" in text


@compiled_only
def test_scratch_shares_the_arena_with_dead_temps():
    """Blocks of different kernels overlap: each lives at one step only."""
    step, x, w = _conv_step()
    plan = step.lower(nc.Tensor(x), nc.Tensor(w)).executable.plan
    blocks = [b for b in plan.live if b.kind == "scratch"]
    spans = sorted((plan.offsets[b], plan.offsets[b] + b.nbytes) for b in blocks)
    assert len(spans) > 1
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False))


@compiled_only
def test_results_have_the_same_bits_on_one_and_two_threads():
    step, x, w = _conv_step()
    n = runtime.num_threads()
    results = []
    try:
        for t in (1, 2):
            runtime.set_num_threads(t)
            v, (gx, gw) = step(nc.Tensor(x), nc.Tensor(w))
            results.append([v.numpy(), gx.numpy(), gw.numpy()])
    finally:
        runtime.set_num_threads(n)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.tensor(w, dtype=torch.float64).permute(3, 2, 0, 1).requires_grad_()
    loss = (torch.nn.functional.conv2d(tx, tw, padding=1) ** 2).sum()
    loss.backward()
    v, gx, gw = results[0]
    np.testing.assert_allclose(v, loss.item(), rtol=1e-4)
    gx_ref = tx.grad.permute(0, 2, 3, 1).numpy()
    gw_ref = tw.grad.permute(2, 3, 1, 0).numpy()
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-3, atol=1e-3 * np.abs(gx_ref).max())
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-3, atol=1e-3 * np.abs(gw_ref).max())


@compiled_only
def test_debug_memory_prints_the_plan_with_its_scratch(monkeypatch, capsys):
    from needlec.codegen.llvm.program import compile_program

    step, x, w = _conv_step()
    program = step.lower(nc.Tensor(x), nc.Tensor(w)).program
    monkeypatch.setenv("NEEDLEC_DEBUG", "memory")
    ex = compile_program(program)
    err = capsys.readouterr().err
    assert err.startswith("memory plan:")
    for b in ex.plan.scratch_parts:
        assert f"{b.name} " in err


def test_chunks_are_cut_as_the_runtime_cuts_them():
    """A per-chunk scratch copy is picked by `lo // chunk_size(n, grain)`: the formula must be
    the runtime's own (runtime/pool.c), or two chunks could share a copy."""
    import re
    from pathlib import Path

    from needlec.codegen.llvm import loops

    pool = (Path(__file__).resolve().parents[2] / "runtime" / "pool.c").read_text()
    assert int(re.search(r"#define MAX_CHUNKS (\d+)", pool).group(1)) == loops.MAX_CHUNKS
    assert "int64_t chunk = (n + MAX_CHUNKS - 1) / MAX_CHUNKS;" in pool
    assert "if (chunk < grain) chunk = grain;" in pool
    for n, grain in [(1, 1), (10, 3), (64, 1), (65, 1), (1000, 1), (1000, 40), (129, 2)]:
        chunk = loops.chunk_size(n, grain)
        starts = list(range(0, n, chunk))
        assert len(starts) <= loops.MAX_CHUNKS
        assert [lo // chunk for lo in starts] == list(range(len(starts)))
