"""Detection through the training engine (fast mode on the synthetic devkit): the run, its summary
and reference lines, resumption, the config and command line, DDP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sca_lib.detection import DETECTION_GROUPS, DETECTION_STAGE_GROUPS
from sca_lib.metrics import detection_metrics
from sca_lib.train import TrainConfig, _parser, build_schedule, config_from_args, train_detector, train_model
from sca_lib.train_detection import prior_box_detections, random_box_detections
from sca_lib.studies import DETECTION_CPU_PROTOCOL

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("detdata"))


def small(data_root, **kw):
    base = dict(task="detection", attention=None, fpn_attention="dual", data_root=data_root, train_images=24,
                val_images=12)
    return TrainConfig.from_mode("fast", **{**base, **kw})


class Interrupt:
    def on_epoch_end(self, trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt


def test_a_detector_trains_evaluates_and_resumes(tmp_path, data_root):
    ref = train_detector(small(data_root), tmp_path / "ref", progress=False)
    assert ref["task"] == "detection" and ref["epochs"] == 3 and ref["num_images"] == 12
    assert 0.0 <= ref["mAP"] <= 1.0 and 0.0 <= ref["mAP_voc2007"] <= 1.0 and ref["top1"] is None
    assert [r["stage_name"] for r in ref["history"]] == ["attention+FPN+heads", "+late trunk", "whole detector"]
    assert all(r["train_loss"] == pytest.approx(sum(r[f"train_loss_{k}"] for k in
                                                    ("classifier", "box_reg", "objectness", "rpn_box_reg")))
               for r in ref["history"])
    # the trunk trains only from stage 2, the early trunk from stage 3
    assert ref["history"][0]["trainable_params"] < ref["history"][1]["trainable_params"] < ref["history"][2]["trainable_params"]
    refl = ref["reference"]
    assert set(refl) >= {"chance_mAP", "chance_mAP_sd", "chance_mAP_max", "prior_mAP"} and refl["chance_mAP"] < 0.05
    s = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert s["config"]["task"] == "detection" and s["config"]["fpn_attention"] == "dual" and "history" not in s

    with pytest.raises(KeyboardInterrupt):
        train_detector(small(data_root), tmp_path / "run", progress=False, callbacks=[Interrupt()])
    resumed = train_detector(small(data_root), tmp_path / "run", progress=False)
    assert resumed["resumed"]
    keys = ("train_loss", "mAP", "grad_norm_mean")
    assert [[r[k] for k in keys] for r in resumed["history"]] == [[r[k] for k in keys] for r in ref["history"]]


def test_detection_config_and_schedule():
    cfg = TrainConfig.from_mode("cpu", task="detection", backbone="resnet18", attention="dual", placement="layer3.1",
                                detector={"min_size": 96, "detector_kwargs": {"rpn_post_nms_top_n_test": 20}})
    assert cfg.bn_policy == "keep" and cfg.batch_size == 4
    protocol = DETECTION_CPU_PROTOCOL["detector"]
    assert cfg.detector["min_size"] == 96 and cfg.detector["max_size"] == protocol["max_size"] == 288  # the mode's, updated
    assert cfg.detector["detector_kwargs"]["rpn_post_nms_top_n_test"] == 20
    assert cfg.detector["detector_kwargs"]["rpn_pre_nms_top_n_test"] == 150
    assert list(cfg.stage_epochs) == DETECTION_CPU_PROTOCOL["stage_epochs"]
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    stages = build_schedule(cfg)
    assert [s.groups for s in stages] == [tuple(g) for g in DETECTION_STAGE_GROUPS]
    assert build_schedule(TrainConfig.from_mode("cpu", task="detection", schedule="single"))[0].groups == DETECTION_GROUPS
    assert build_schedule(TrainConfig.from_mode("cpu", task="detection", schedule="probe"))[0].groups == \
        ("fpn", "rpn", "roi_heads")
    # a detection config takes no mode placement (the detector's default applies); a classifier's dict is unchanged
    assert TrainConfig.from_mode("cpu", task="detection", attention="dual").attention.placement is None
    assert not {"task", "fpn_attention", "detector", "detector_weights"} & set(TrainConfig.from_mode("cpu").to_dict())
    with pytest.raises(ValueError, match="detection settings; add task='detection'"):
        TrainConfig.from_mode("cpu", fpn_attention="dual")
    with pytest.raises(ValueError, match="nothing to re-estimate"):
        TrainConfig.from_mode("cpu", task="detection", bn_policy="reestimate")
    with pytest.raises(ValueError, match="unknown fpn_attention 'sse'"):
        TrainConfig.from_mode("cpu", task="detection", fpn_attention="sse")
    with pytest.raises(ValueError, match="task must be one of"):
        TrainConfig.from_mode("cpu", task="segmentation")


def test_command_line_defaults():
    det = config_from_args(_parser().parse_args(["--task", "detection", "--fpn-attention", "lite"]))
    assert det.task == "detection" and det.attention.kind is None and det.fpn_attention == "lite"
    assert config_from_args(_parser().parse_args([])).attention.kind == "dual"  # a classifier's default
    with pytest.raises(ValueError, match="add --task detection"):
        config_from_args(_parser().parse_args(["--fpn-attention", "dual"]))


def test_reference_detectors():
    train = [{"boxes": torch.tensor([[0.0, 0, 50, 50]]), "labels": torch.tensor([1]), "difficult": torch.tensor([False])},
             {"boxes": torch.tensor([[50.0, 50, 100, 100]]), "labels": torch.tensor([2]), "difficult": torch.tensor([False])},
             {"boxes": torch.tensor([[0.0, 0, 50, 50]]), "labels": torch.tensor([1]), "difficult": torch.tensor([False])}]
    sizes = [(100, 100)] * 3
    dets = prior_box_detections(train, sizes, [(200, 100)], num_classes=3)
    # class 1: mean relative box (0, 0, .5, .5) scaled to 100 x 200 (w x h), in 2 of 3 images; class 2 in 1 of 3
    assert dets[0]["labels"].tolist() == [1, 2]
    assert dets[0]["boxes"][0].tolist() == [0.0, 0.0, 50.0, 100.0]
    assert dets[0]["scores"][0] > dets[0]["scores"][1]
    rnd = random_box_detections(train, sizes, [(100, 100)] * 4, num_classes=3, seed=1)
    assert [len(d["boxes"]) for d in rnd] == [1] * 4  # one object per training image on average
    assert all(torch.allclose(d["boxes"][:, 2:] - d["boxes"][:, :2], torch.tensor(50.0), atol=1e-4) for d in rnd)
    gts = [{"boxes": torch.tensor([[0.0, 0, 50, 100]]), "labels": torch.tensor([1])}]
    assert detection_metrics(dets, gts, num_classes=3)["mAP"] == 1.0


def test_train_model_picks_the_task(tmp_path, data_root):
    s = train_model(small(data_root, stage_epochs=(1, 1, 1), schedule="probe", fpn_attention=None), tmp_path,
                    progress=False)
    assert s["task"] == "detection" and s["history"][0]["stage_name"] == "FPN+heads on a frozen trunk"
    assert np.isfinite(s["mAP"])


def test_torchrun_two_cpu_processes_detection(tmp_path, data_root):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc_per_node=2", "--standalone", "-m", "sca_lib.train", "--task", "detection", "--mode", "fast",
        "--fpn-attention", "dual", "--data-root", data_root, "--train-images", "16", "--val-images", "10",
        "--out-dir", str(tmp_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("done: mAP") == 1 and "2 process(es)" in out.stdout
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["world_size"] == 2 and s["num_images"] == 10  # evaluation sharded, gathered: the whole val split
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert all(r["train_images"] == 16 for r in rows) and [r["steps"] for r in rows] == [2, 2, 2]
