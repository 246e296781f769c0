"""Which way round should a batched matrix-vector product be written? The reductions of the fast path's backward.

The backward of ``x * a * b`` (a channel gate a, a spatial gate b) needs, for each image's matrix
of ``grad * x`` ((C, H*W) as U channels first, (H*W, C) as V channels last), its products with b
(C values) and with a (H*W values). With ``torch.bmm`` each can be written as a matrix times a
(contiguous) column vector or as a row vector times a (transposed) matrix; the numbers are the same,
the speed is not. This script times the forms the fast path used before and uses now against a read
pass (``U.sum()``), interleaved round by round (``sca_lib.profile``), at the module benchmark's four
shapes:

    python benchmarks/bench_matvec.py --out results/performance

``sca_lib.gating`` writes every such product as a row vector times a matrix.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from sca_lib.profile import paired_ratios, time_interleaved

SHAPES = ((8, 512, 14, 14), (8, 2048, 7, 7), (32, 256, 28, 28), (8, 64, 56, 56))


def measure(shape, rounds: int, warmup: int) -> pd.DataFrame:
    n, c, h, w = shape
    torch.manual_seed(0)
    u = torch.randn(n, c, h * w)  # channels first: each image's (C, H*W) matrix
    v = torch.randn(n, h * w, c)  # channels last: each image's (H*W, C) matrix
    a_row, a_col = torch.randn(n, 1, c), torch.randn(n, c, 1)
    b_row, b_col = torch.randn(n, 1, h * w), torch.randn(n, h * w, 1)
    fns = {
        "read pass (U.sum)": lambda: u.sum(),
        "CF, U b: bmm(U, b) (before)": lambda: torch.bmm(u, b_col),
        "CF, U b: bmm(b^T, U^T) (now)": lambda: torch.bmm(b_row, u.transpose(1, 2)),
        "CF, a^T U: bmm(a^T, U)": lambda: torch.bmm(a_row, u),
        "CL, b^T V: bmm(b^T, V)": lambda: torch.bmm(b_row, v),
        "CL, V a: bmm(V, a) (before)": lambda: torch.bmm(v, a_col),
        "CL, V a: bmm(a^T, V^T) (now)": lambda: torch.bmm(a_row, v.transpose(1, 2)),
    }
    table = paired_ratios(time_interleaved(fns, rounds, warmup), base="read pass (U.sum)")
    table.insert(0, "shape", "x".join(map(str, shape)))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="*", default=["x".join(map(str, s)) for s in SHAPES], help="NxCxHxW")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="write matvec_cpu.{csv,md} here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    table = pd.concat([measure(s, args.rounds, args.warmup) for s in shapes], ignore_index=True)
    lines = ["| shape | product | median ms | / read pass, median [95 % interval] |", "|---|---|---:|---:|"]
    lines += [f"| {r.shape} | {r.model} | {r.median_ms:.3f} | {r.ratio:.2f} [{r.ratio_ci_low:.2f}, {r.ratio_ci_high:.2f}] |"
              for r in table.itertuples()]
    text = "\n".join(lines) + "\n"
    provenance = (f"{time.perf_counter() - start:.0f} s, torch {torch.__version__}, {platform.machine()}, "
                  f"{torch.get_num_threads()} intra-op thread(s), {args.rounds} paired rounds")
    print(text)
    print(f"[{provenance}]")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "matvec_cpu.csv", index=False)
        cmd = "python benchmarks/bench_matvec.py " + " ".join(sys.argv[1:] if argv is None else argv)
        (args.out / "matvec_cpu.md").write_text(
            "# Batched matrix-vector products, both ways round, against a read pass\n\n"
            f"Regenerate: `{cmd}`. Measured: {provenance}; on the development machine, a shared 2-core x86_64 VM.\n\n"
            "U is (N, C, H*W) and V (N, H*W, C) for the shape N x C x H x W; a and b are the channel and "
            "spatial gates; `(before)` and `(now)` are two ways of writing the same product.\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
