"""sca_lib.train on the real backbones and the synthetic devkit (fast mode): config, the pretrained
stand-in through weights=, C8 init on new modules only, seeds, resume after SIGKILL, DDP (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sca_lib.attention import attention_modules
from sca_lib.backbones import build_classifier
from sca_lib.groups import parameter_groups
from sca_lib.train import (
    TrainConfig,
    build_model,
    build_schedule,
    train_classifier,
    train_from_config,
)
from sca_lib.standin import _spec, pretrain_standin, standin_path, standin_record, synthetic_devkit
from sca_lib.studies import CPU_PROTOCOL, V1_PROTOCOL
from sca_lib.config import repo_root

REPO = Path(__file__).resolve().parent.parent




def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# --- config --------------------------------------------------------------------------------------

def test_config_modes_and_json_round_trip():
    cfg = TrainConfig.from_mode("fast", attention="dual", seed=3)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d and d["mode"] == "fast" and d["stage_epochs"] == [1, 1, 1]
    assert TrainConfig.from_dict(d) == cfg
    full = TrainConfig.from_mode("full")
    assert (full.image_size, full.weights, full.dataset, full.stage_epochs) == (224, "DEFAULT", "voc", (5, 10, 15))
    assert TrainConfig.from_mode("cpu", quick=True).stage_epochs == (2, 3, 3)
    assert TrainConfig.from_mode("cpu", quick=True, stage_epochs=(1, 1, 1)).stage_epochs == (1, 1, 1)
    with pytest.raises(ValueError, match="no field"):
        TrainConfig.from_mode("fast", learning_rate=1)
    with pytest.raises(ValueError, match="takes no attention settings"):
        TrainConfig.from_mode("fast", attention=None, reduction=8)
    # the attention settings live in one AttentionSpec and are stored flat
    assert cfg.attention.kind == "dual" and d["attention"] == "dual" and "reduction" in d
    assert TrainConfig.from_mode("FAST").mode == "fast"
    with pytest.raises(ValueError, match="expected one of fast, cpu, full"):
        TrainConfig.from_mode("bogus")
    with pytest.raises(ValueError, match="loss_reduction must be"):
        TrainConfig.from_mode("fast", loss_reduction="sum")
    with pytest.raises(ValueError, match="train_images must be a positive number"):
        TrainConfig.from_mode("fast", train_images=0)
    # a config written before the run mode had one name still loads
    legacy = {k: v for k, v in d.items() if k not in ("mode", "alpha", "beta")}
    assert TrainConfig.from_dict({**legacy, "preset": "fast", "data_preset": "fast", "nan_at_step": None}) == cfg


def test_the_cpu_mode_is_the_cpu_protocol_with_its_placements():
    cpu = TrainConfig.from_mode("cpu", attention="dual")
    assert {k: getattr(cpu, k) for k in CPU_PROTOCOL} == {k: (tuple(v) if isinstance(v, list) else v)
                                                          for k, v in CPU_PROTOCOL.items()}
    assert (cpu.data_version, cpu.image_size, cpu.loss_reduction, cpu.bn_policy) == (2, 112, "mean", "reestimate")
    # the module goes where the map is 7x7 at 112 px, unless a placement is named
    assert cpu.attention.placement == "after_features.8"
    assert TrainConfig.from_mode("cpu", backbone="resnet18", attention="dual").attention.placement == "layer3.1"
    assert TrainConfig.from_mode("cpu", attention="dual", placement="after_features.12").attention.placement == \
        "after_features.12"
    assert TrainConfig.from_mode("cpu", attention=None).attention.placement is None
    assert TrainConfig.from_mode("fast", attention="dual").attention.placement is None  # the backbone's default
    model = build_classifier("mobilenet_v3_small", attention=cpu.attention)
    feats = model.features[:9](torch.zeros(1, 3, 112, 112))
    assert feats.shape[-2:] == (7, 7)
    # the first protocol's settings are pinned for its grid, and differ where the cpu mode changed
    assert V1_PROTOCOL["image_size"] == 96 and V1_PROTOCOL["data_version"] == 1


def test_the_short_standin_is_another_cache_entry(tmp_path):
    long, short = (standin_path("mobilenet_v3_small", "cpu", 112, tmp_path, 2, recipe=r) for r in (None, "short"))
    assert long != short and long.parent == short.parent
    assert _spec("mobilenet_v3_small", "cpu", 112, 2, "short")["epochs"] < _spec("mobilenet_v3_small", "cpu", 112, 2)["epochs"]
    assert _spec("resnet18", "cpu", 112, 2)["epochs"] < _spec("mobilenet_v3_small", "cpu", 112, 2)["epochs"]
    with pytest.raises(ValueError, match="no stand-in pre-training recipe 'cpu-huge'"):
        standin_path("mobilenet_v3_small", "cpu", 112, tmp_path, 2, recipe="huge")
    assert TrainConfig.from_mode("cpu", weights="standin-short").weights == "standin-short"


def test_the_control_schedules():
    probe = build_schedule(TrainConfig.from_mode("cpu", schedule="probe"))
    assert len(probe) == 1 and probe[0].groups == ("head",) and probe[0].epochs == 16 and probe[0].lr == 0.05
    const = build_schedule(TrainConfig.from_mode("cpu", schedule="staged_constant", single_lr=0.02))
    assert [s.lr for s in const] == [0.02] * 3
    assert [s.groups for s in const] == [s.groups for s in build_schedule(TrainConfig.from_mode("cpu"))]
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig.from_mode("cpu", schedule="cosine")
    with pytest.raises(ValueError, match="bn_policy must be"):
        TrainConfig.from_mode("cpu", bn_policy="reset")


def test_bn_reestimation_policy_evaluates_again_and_keeps_the_first_metrics(tmp_path):
    cfg = TrainConfig.from_mode("fast", attention="dual", seed=1)
    kept = train_classifier(cfg, tmp_path / "keep", progress=False)
    re = train_classifier(TrainConfig.from_mode("fast", attention="dual", seed=1, bn_policy="reestimate"),
                          tmp_path / "re", progress=False)
    assert re["mAP_before_bn"] == kept["mAP"] and re["val_loss_before_bn"] == kept["val_loss"]
    assert re["val_loss"] != kept["val_loss"] and "loss" not in re
    again = train_classifier(TrainConfig.from_mode("fast", attention="dual", seed=1, bn_policy="reestimate"),
                             tmp_path / "re", progress=False)  # a finished run: the same numbers again
    assert (again["mAP"], again["val_loss"]) == (re["mAP"], re["val_loss"])


def test_load_trained_rebuilds_the_model_the_summary_measured(tmp_path):
    """The run's final weights (after the BatchNorm re-estimation) give back the summary's mAP; the
    last epoch's checkpoint (before it) holds other BatchNorm statistics."""
    from torch.utils.data import DataLoader

    from sca_lib.engine import _split_batch
    from sca_lib.metrics import classification_metrics
    from sca_lib.train import FINAL_WEIGHTS, build_datasets, load_trained

    cfg = TrainConfig.from_mode("fast", attention="dual", seed=2, bn_policy="reestimate")
    s = train_classifier(cfg, tmp_path / "run", progress=False)
    model, saved = load_trained(tmp_path / "run")
    assert not model.training and saved["mAP"] == s["mAP"] and saved["config"] == cfg.to_dict()
    _, val, _ = build_datasets(cfg, verbose=False)
    parts = [_split_batch(b) for b in DataLoader(val, batch_size=64)]
    with torch.no_grad():
        scores = torch.cat([model(x) for x, _, _ in parts])
    y, ig = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]).bool()
    assert classification_metrics(scores, y, ig)["mAP"] == pytest.approx(s["mAP"], abs=1e-6)
    final = torch.load(tmp_path / "run" / FINAL_WEIGHTS, weights_only=True)
    last_epoch = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert any(not torch.equal(final[k], last_epoch[k]) for k in final if k.endswith("running_mean"))
    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        load_trained(tmp_path / "elsewhere")
    (tmp_path / "run" / FINAL_WEIGHTS).write_bytes(b"not a state dict")
    with pytest.raises(RuntimeError, match="cannot load"):
        load_trained(tmp_path / "run")


def test_staged_and_single_schedules():
    staged = build_schedule(TrainConfig.from_mode("cpu"))
    assert [s.groups for s in staged][0] == ("attention", "head")
    assert [s.lr for s in staged] == [0.05, 0.005, 0.0005]  # C6's tenfold steps, from the cpu protocol's rate
    assert [s.lr for s in build_schedule(TrainConfig.from_mode("full"))] == [0.01, 0.001, 0.0001]  # C6 as written
    single = build_schedule(TrainConfig.from_mode("cpu", schedule="single"))
    assert len(single) == 1 and single[0].epochs == sum(s.epochs for s in staged)
    assert set(single[0].groups) == {"attention", "head", "late", "early"}


# --- the pretrained stand-in and C8 ---------------------------------------------------------------

def test_standin_is_cached_and_loaded_through_weights(tmp_path):
    path = pretrain_standin("mobilenet_v3_small", "fast", image_size=32, progress=False)
    assert path == standin_path("mobilenet_v3_small", "fast", 32) and path.exists()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["spec"]["data"]["variant"] == "source" and meta["spec"]["seed"] != 0
    t0 = time.perf_counter()
    assert pretrain_standin("mobilenet_v3_small", "fast", image_size=32, progress=False) == path
    assert time.perf_counter() - t0 < 1.0  # cached
    state = torch.load(path, weights_only=True)
    cfg = TrainConfig.from_mode("fast", attention="dual", identity_init=True)
    torch.manual_seed(0)
    model = build_model(cfg, weights=str(path))
    own = model.state_dict()
    backbone_keys = [k for k in state if not k.startswith("classifier.3.")]
    # every pretrained tensor arrived untouched (C8 init ran on the attention module only) ...
    assert all(torch.equal(own[k], state[k]) for k in backbone_keys)
    # ... and with the identity start the model computes exactly what the plain pretrained model does
    plain = build_classifier("mobilenet_v3_small", num_classes=20, weights=str(path))
    plain.classifier[3].load_state_dict(model.classifier[3].state_dict())
    model.eval(), plain.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), plain(x))
    # without identity_init the C8-initialised attention changes the output
    other = build_model(TrainConfig.from_mode("fast", attention="dual"), weights=str(path)).eval()
    other.classifier[3].load_state_dict(model.classifier[3].state_dict())
    assert not torch.allclose(other(x), plain(x))
    assert len(attention_modules(other)) == 1 and parameter_groups(other)["attention"]


def test_build_model_weights_none_means_random_weights_whatever_the_config(monkeypatch):
    import sca_lib.train as train_mod

    def no_standin(*args, **kwargs):
        raise AssertionError("weights=None must not pre-train or load the config's stand-in")

    monkeypatch.setattr(train_mod, "pretrain_standin", no_standin)
    cfg = TrainConfig.from_mode("fast", attention="dual")
    assert cfg.weights in train_mod.STANDINS  # the fast preset starts from the stand-in ...
    torch.manual_seed(0)
    a = build_model(cfg, weights=None)  # ... but None asks for random weights
    torch.manual_seed(0)
    b = build_classifier("mobilenet_v3_small", attention=cfg.attention, num_classes=20, weights=None)
    assert a.features[0][0].weight.shape == b.features[0][0].weight.shape
    torch.testing.assert_close(a.features[0][0].weight, b.features[0][0].weight)
    with pytest.raises(AssertionError, match="must not pre-train"):
        build_model(cfg)  # the default takes the config's weights: here the stand-in


# --- end to end ----------------------------------------------------------------------------------

def test_fast_run_summary_and_same_seed_same_metrics(tmp_path):
    cfg = TrainConfig.from_mode("fast", attention="dual", seed=1)
    a = train_classifier(cfg, tmp_path / "a", progress=False)
    for key in ("mAP", "top1", "per_class_ap", "params_total", "params_trainable", "flops", "wall_time_s",
                "images_per_s", "epochs", "seed", "config", "clip_fraction"):
        assert key in a, key
    assert len(a["per_class_ap"]) == 20 and a["epochs"] == 3 and a["config"]["seed"] == 1
    ref = a["reference"]  # the split's chance and prior lines travel with every result
    assert 0 < ref["chance_mAP"] < 1 and ref["chance_draws"] == 200 and ref["prior_val_loss"] > 0
    assert a["params_trainable"] == a["params_total"]  # stage 3 trains everything
    # which stand-in weights exactly: the digest of the file the run loaded
    assert a["standin"]["weights_digest"] == standin_record(a["weights"] if Path(a["weights"]).is_absolute()
                                                            else repo_root() / a["weights"])["weights_digest"]
    assert (tmp_path / "a" / "summary.json").exists() and (tmp_path / "a" / "log.csv").exists()
    b = train_classifier(cfg.to_dict(), tmp_path / "b", progress=False)
    assert (a["mAP"], a["top1"], a["val_loss"]) == (b["mAP"], b["top1"], b["val_loss"])


def test_ablation_entry_point_takes_the_runners_config(tmp_path):
    cfg = {"mode": "fast", "backbone": "mobilenet_v3_small", "seed": 0, "attention": None, "placement": None,
           "reduction": None, "strength": None, "drop_rate": 0.0, "identity_init": False, "schedule": "single"}
    s = train_from_config(cfg, tmp_path)
    assert "history" not in s and s["config"]["schedule"] == "single" and s["epochs"] == 3
    assert len(s["per_class_ap"]) == 20 and s["flops"] > 0


def _cli(out_dir, *extra):
    return [sys.executable, "-m", "sca_lib.train", "--mode", "fast", "--attention", "dual", "--seed", "2",
            "--out-dir", str(out_dir), "--no-progress", *extra]


# The command line with a callback that sleeps after every epoch's checkpoint, so the test can kill
# the run between epochs (the test's own hook: the library has no pause option).
_PAUSED_CLI = """
import sys, time
from sca_lib import train

class Pause:
    def on_epoch_end(self, trainer, record):
        time.sleep(30)

plain = train.train_classifier
train.train_classifier = lambda *a, **k: plain(*a, **{**k, "callbacks": [Pause()]})
sys.exit(train.main(sys.argv[1:]))
"""


def test_resume_after_sigkill_reaches_the_uninterrupted_metrics(tmp_path):
    ref = train_classifier(TrainConfig.from_mode("fast", attention="dual", seed=2), tmp_path / "ref",
                           progress=False)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_CLI] + _cli(run)[3:], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = run / "checkpoint.pt"
    deadline = time.time() + 60
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint within 60 s"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    out = subprocess.run(_cli(run), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in out.stdout and "after epoch 1/3" in out.stdout
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("done: mAP") and "images/s" in last
    s = json.loads((run / "summary.json").read_text())
    assert (s["mAP"], s["top1"], s["val_loss"]) == (ref["mAP"], ref["top1"], ref["val_loss"])
    assert [r["epoch"] for r in map(json.loads, open(run / "log.jsonl"))] == [1, 2, 3]


def test_divergence_seen_at_evaluation_exits_3_without_a_traceback(tmp_path):
    # at LR 100 the clipped steps keep the loss finite, but the weights blow up: the scores are NaN
    out = subprocess.run(_cli(tmp_path, "--schedule", "single", "--single-lr", "100"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "evaluation produced non-finite scores" in out.stderr and "Traceback" not in out.stderr


def test_bad_settings_exit_2_with_the_reason(tmp_path):
    out = subprocess.run(_cli(tmp_path, "--train-images", "0"), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "train_images must be a positive number" in out.stderr


def test_uncached_voc_code_path_reads_a_devkit(tmp_path):
    """The `full` mode's data path (VOCClassification + transforms, no in-memory cache), on the synthetic devkit."""
    from sca_lib.data import synthetic_root
    from sca_lib.train import build_datasets

    root = synthetic_devkit("target", "fast")  # generated if missing (a second or two)
    assert root == synthetic_root("target", "fast")
    cfg = TrainConfig.from_mode("fast", dataset="voc", data_root=str(root), cache_images=False, val_images=5)
    train_set, val_set, classes = build_datasets(cfg, verbose=False)
    x, y, ig = train_set[0]
    assert x.shape == (3, 32, 32) and y.shape == (20,) and ig.dtype == torch.bool and len(val_set) == 5
    assert abs(float(x.mean())) < 3  # normalised with ImageNet's mean/std, not raw [0, 1]


_STANDIN = "from sca_lib.standin import pretrain_standin; print(pretrain_standin('mobilenet_v3_small', 'fast', 32))"


def test_two_processes_needing_the_same_standin_train_it_once(tmp_path):
    env = {**_env(), "SCA_DATA_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _STANDIN], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("pre-training the stand-in" in o for o in outs) == 1, outs  # one trains, the other waits
    paths = {o.strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1 and Path(paths.pop()).is_relative_to(tmp_path / "pretrained")


def test_the_standin_cache_follows_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SCA_DATA_DIR", str(tmp_path / "default"))
    assert standin_path("resnet18", "fast", 32).parent == tmp_path / "default" / "pretrained"
    cfg = TrainConfig.from_mode("fast", attention=None, data_root=str(tmp_path / "mine"))
    from sca_lib.train import _resolve_weights

    path = Path(_resolve_weights(cfg, progress=False))
    assert path.parent == tmp_path / "mine" / "pretrained" and path.exists()
    assert not (tmp_path / "default").exists()


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "5"], "alpha must be in"), (["--attention", "bogus"], "unknown attention"),
    (["--placement", "bogus"], "unknown placement"), (["--backbone", "bogus"], "unknown backbone")])
def test_bad_model_settings_stop_before_any_work(tmp_path, flags, message):
    env = {**_env(), "SCA_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run(_cli(tmp_path / "run", *flags), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "data").exists()  # no data generated, no stand-in trained first


def test_the_data_version_reaches_the_devkit_and_the_standin(tmp_path, monkeypatch):
    monkeypatch.setenv("SCA_DATA_DIR", str(tmp_path))
    cfg = TrainConfig.from_mode("fast", attention=None, data_version=2, weights=None, train_images=4, val_images=4)
    from sca_lib.train import build_datasets

    train_set, _, classes = build_datasets(cfg, verbose=False)
    assert (tmp_path / "synthetic" / "target-fast-v2").is_dir() and len(train_set) == 4
    assert standin_path("mobilenet_v3_small", "fast", 32, data_version=2) != standin_path("mobilenet_v3_small", "fast", 32)
    assert TrainConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "data_version"}).data_version == 1
    with pytest.raises(ValueError, match="data_version must be 1 or 2"):
        TrainConfig.from_mode("fast", data_version=3)
