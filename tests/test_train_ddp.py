"""DistributedDataParallel on CPU: `torchrun --nproc_per_node=2 -m sca_lib.train --mode fast` (gloo)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent


def test_torchrun_two_cpu_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc_per_node=2", "--standalone",
        "-m", "sca_lib.train", "--mode", "fast", "--attention", "dual", "--out-dir", str(tmp_path),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("done: mAP") == 1  # only rank 0 reports ...
    assert "2 process(es)" in out.stdout
    s = json.loads((tmp_path / "summary.json").read_text())  # ... and writes
    assert s["world_size"] == 2 and s["epochs"] == 3
    assert s["num_images"] == 40  # evaluation sharded over both ranks, gathered: the whole val split
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # 64 training images, 32 per rank, batch 16: 2 steps per epoch per rank, all 64 images seen
    assert [r["steps"] for r in rows] == [2, 2, 2] and all(r["train_images"] == 64 for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stray temp files
