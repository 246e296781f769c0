"""sca_lib.engine with a tiny model and random tensors: schedule, freezing, optimizer state across
stage transitions, clipping, determinism, resume, divergence guard, logs."""

import csv
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sca_lib._io import atomic_save
from sca_lib.engine import DivergenceError, Trainer
from sca_lib.losses import masked_bce_with_logits
from sca_lib.schedule import Stage, expand_schedule, schedule_from_dicts, single_stage_schedule, staged_schedule




class Tiny(nn.Module):
    """(N, 3, 8, 8) -> (N, 5); an early/late backbone with BatchNorm, an attention gate, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.late = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.attn = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.late(self.early(x))
        x = x * torch.sigmoid(self.attn(x))
        return self.head(x.mean((2, 3)))

    def groups(self):
        return {"attention": list(self.attn.parameters()), "head": list(self.head.parameters()),
                "late": list(self.late.parameters()), "early": list(self.early.parameters())}


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (torch.rand(n, 5, generator=g) < 0.4).float()
    y[0] = 1  # every class has a positive
    ig = torch.rand(n, 5, generator=g) < 0.1
    return TensorDataset(x, y, ig)


def make_trainer(tmp_path, stages=None, seed=0, **kw):
    torch.manual_seed(seed)
    model = Tiny()
    return Trainer(model, model.groups(), stages or staged_schedule((1, 1, 1)), data(), data(24, 1),
                   out_dir=tmp_path, batch_size=16, seed=seed, progress=False, **kw)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# --- schedule --------------------------------------------------------------------------------------

def test_article_schedule_as_data():
    s = staged_schedule()
    assert [(x.epochs, x.lr) for x in s] == [(5, 0.01), (10, 0.001), (10, 0.0001)]
    assert s[0].groups == ("attention", "head")  # stage 1: attention AND the new head
    assert s[2].groups == ("attention", "head", "late", "early")
    rows = expand_schedule(s)
    assert len(rows) == 25 and rows[4]["lr"] == 0.01 and rows[5]["lr"] == 0.001 and rows[15]["lr"] == 0.0001
    assert rows[5]["stage"] == 1 and rows[5]["epoch"] == 6
    one = single_stage_schedule(7, 0.001)
    assert len(one) == 1 and one[0].groups == s[2].groups
    assert schedule_from_dicts([x.to_dict() for x in s]) == s


def test_stage_errors_teach():
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        Stage("a", 0, 0.1, ("head",))
    with pytest.raises(ValueError, match="lr must be a positive"):
        Stage("a", 1, -1.0, ("head",))
    with pytest.raises(ValueError, match="lacks"):
        schedule_from_dicts([{"epochs": 1}])


def test_unknown_group_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not have"):
        make_trainer(tmp_path, stages=[Stage("x", 1, 0.1, ("neck",))])


# --- freezing, optimizer state, clipping ----------------------------------------------------------

class Recorder:
    def __init__(self):
        self.start, self.end, self.momentum_end, self.momentum_start, self.lrs = {}, {}, {}, {}, {}

    def _momentum(self, trainer):
        return {id(p): trainer.optimizer.state[p]["momentum_buffer"].clone()
                for p in trainer.trainable if "momentum_buffer" in trainer.optimizer.state.get(p, {})}

    def on_epoch_start(self, trainer, epoch):
        self.start[epoch] = snapshot(trainer.model)
        self.momentum_start[epoch] = self._momentum(trainer)
        self.lrs[epoch] = {pg["name"]: pg["lr"] for pg in trainer.optimizer.param_groups}

    def on_epoch_end(self, trainer, record):
        self.end[record["epoch"]] = snapshot(trainer.model)
        self.momentum_end[record["epoch"]] = self._momentum(trainer)


def changed(rec, epoch, prefix):
    a, b = rec.start[epoch], rec.end[epoch]
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_stages_freeze_and_unfreeze_the_right_groups(tmp_path):
    rec = Recorder()
    t = make_trainer(tmp_path, callbacks=[rec])
    t.fit()
    # stage 1: attention + head train; the whole backbone, BN running stats included, stays put
    assert changed(rec, 1, "attn") and changed(rec, 1, "head")
    assert not changed(rec, 1, "early") and not changed(rec, 1, "late")
    # stage 2: + late; early (weights and BN statistics) still frozen
    assert changed(rec, 2, "late") and not changed(rec, 2, "early")
    assert changed(rec, 3, "early")
    assert rec.lrs[1] == {"attention": 0.01, "head": 0.01}
    assert rec.lrs[2] == {"attention": 0.001, "head": 0.001, "late": 0.001}
    assert rec.lrs[3] == {"attention": 1e-4, "head": 1e-4, "late": 1e-4, "early": 1e-4}
    counts = [r["trainable_params"] for r in t.history]
    assert counts[0] < counts[1] < counts[2] == sum(p.numel() for p in t.model.parameters())


def test_momentum_survives_a_stage_transition(tmp_path):
    rec = Recorder()
    make_trainer(tmp_path, callbacks=[rec]).fit()
    end1, start2 = rec.momentum_end[1], rec.momentum_start[2]
    assert len(end1) == 4  # attention and head: weight + bias each
    for pid, buf in end1.items():  # the attention/head buffers carried into stage 2 unchanged
        assert torch.equal(start2[pid], buf)
    assert len(start2) == 4  # the newly unfrozen late group starts without momentum
    assert len(rec.momentum_end[2]) == 4 + 4  # ... and has it after its first epoch (conv + BN: 4)


def test_clipping_is_applied_and_reported(tmp_path):
    loud = lambda logits, y, ig: 1000.0 * masked_bce_with_logits(logits, y, ig)  # noqa: E731
    t = make_trainer(tmp_path, loss_fn=loud)
    s = t.fit()
    assert s["clip_fraction"] == 1.0
    rows = list(csv.DictReader(open(tmp_path / "steps.csv")))
    assert len(rows) == s["steps"] == 3 * 3
    assert all(float(r["grad_norm"]) > 2.0 and float(r["grad_norm_clipped"]) == 2.0 for r in rows)
    # every step moved by the clipped norm times the learning rate, whatever the loss's scale
    assert all(float(r["step_size"]) == pytest.approx(float(r["lr"]) * 2.0) for r in rows)
    assert s["history"][0]["step_size_mean"] == pytest.approx(0.01 * 2.0)
    quiet = make_trainer(tmp_path / "q", max_grad_norm=1e6).fit()
    assert quiet["clip_fraction"] == 0.0


def test_masked_bce_ignores_masked_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ig = torch.tensor([[False, True], [False, False]])
    full = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    # default: summed over an image's (kept) labels, averaged over images
    assert masked_bce_with_logits(logits, y, ig) == pytest.approx(float(full[~ig].sum() / 2))
    assert masked_bce_with_logits(logits, y, ig, reduction="mean") == pytest.approx(float(full[~ig].mean()))
    # an ignored label changes nothing, however wrong the logit
    assert masked_bce_with_logits(logits.index_put((torch.tensor(0), torch.tensor(1)), torch.tensor(50.0)), y, ig) \
        == pytest.approx(float(full[~ig].sum() / 2))
    with pytest.raises(ValueError, match="one logit per class"):
        masked_bce_with_logits(logits[:, :1], y)


# --- determinism, resume, checkpoints, logs -----------------------------------------------------

def metrics_of(history):
    return [(r["train_loss"], r["val_loss"], r["mAP"], r["top1"]) for r in history]


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    a = make_trainer(tmp_path / "a", seed=3).fit()
    b = make_trainer(tmp_path / "b", seed=3).fit()
    c = make_trainer(tmp_path / "c", seed=4).fit()
    assert metrics_of(a["history"]) == metrics_of(b["history"])
    assert metrics_of(a["history"]) != metrics_of(c["history"])


class Interrupt:
    def __init__(self, after):
        self.after = after

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("kill_after", [1, 2])
def test_resume_equals_uninterrupted_run(tmp_path, kill_after):
    stages = staged_schedule((1, 2, 1))
    ref = make_trainer(tmp_path / "ref", stages=stages, seed=5)
    ref_summary = ref.fit()
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "run", stages=stages, seed=5, callbacks=[Interrupt(kill_after)]).fit()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == kill_after and set(ckpt["rng"][0]) >= {"python", "numpy", "torch", "loader"}
    resumed = make_trainer(tmp_path / "run", stages=stages, seed=5)
    s = resumed.fit()
    assert s["resumed"] and metrics_of(s["history"]) == metrics_of(ref_summary["history"])
    assert same(snapshot(resumed.model), snapshot(ref.model))
    # the logs were rewritten from the checkpoint: one row per epoch, no duplicates
    rows = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    steps = list(csv.DictReader(open(tmp_path / "run" / "steps.csv")))
    assert [int(r["step"]) for r in steps] == list(range(1, 4 * 3 + 1))
    # a finished run returns its summary without training again
    again = make_trainer(tmp_path / "run", stages=stages, seed=5).fit()
    assert metrics_of(again["history"]) == metrics_of(ref_summary["history"])


def test_resume_refuses_another_config(tmp_path):
    make_trainer(tmp_path, config={"lr": 1}).fit()
    with pytest.raises(RuntimeError, match="different configuration"):
        make_trainer(tmp_path, config={"lr": 2}).fit()
    make_trainer(tmp_path, config={"lr": 2}).fit(resume=False)  # explicit start-over works


def test_atomic_save_leaves_no_temp_file(tmp_path):
    atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert torch.equal(torch.load(tmp_path / "x.pt")["a"], torch.ones(2))


def nan_at_call(k):
    """The masked BCE, except that its k-th call (global step k) returns NaN."""
    calls = []

    def loss(logits, y, ig):
        if logits.requires_grad:  # a training step (evaluation calls the loss too, without grad)
            calls.append(1)
        out = masked_bce_with_logits(logits, y, ig)
        return out * float("nan") if logits.requires_grad and len(calls) == k else out

    return loss


def test_divergence_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, loss_fn=nan_at_call(5))  # 3 steps per epoch: step 5 is in epoch 2
    with pytest.raises(DivergenceError, match=r"global step 5 \(epoch 2") as e:
        t.fit()
    assert "checkpoint" in str(e.value) and "after epoch 1" in str(e.value)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["epoch"] for r in rows] == [1]


def test_logs_hold_one_row_per_epoch(tmp_path):
    s = make_trainer(tmp_path).fit()
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for key in ("lr", "trainable_params", "train_loss", "grad_norm_mean", "clip_fraction", "mAP", "top1",
                "images_per_s"):
        assert key in rows[0]
    assert math.isfinite(s["mAP"]) and 0 <= s["top1"] <= 1 and len(s["per_class_ap"]) == 5


class NaNAtEval(nn.Module):
    """Wraps a model; once ``broken`` is set its eval-mode outputs are NaN (training stays finite)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.broken = inner, False

    def forward(self, x):
        out = self.inner(x)
        return out * float("nan") if self.broken and not self.training else out


def test_divergence_seen_only_at_evaluation_is_a_divergence_error(tmp_path):
    torch.manual_seed(0)
    inner = Tiny()
    model = NaNAtEval(inner)

    class Break:
        def on_epoch_end(self, trainer, record):
            model.broken = True  # from epoch 2 on, evaluation sees NaN scores

    t = Trainer(model, inner.groups(), staged_schedule((1, 1, 1)), data(), data(24, 1), out_dir=tmp_path,
                batch_size=16, progress=False, callbacks=[Break()])
    with pytest.raises(DivergenceError, match=r"evaluation produced non-finite scores .*epoch 2") as e:
        t.fit()
    assert "after epoch 1) is kept" in str(e.value)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_stale_temp_files_of_a_killed_run_are_removed_live_ones_kept(tmp_path):
    import os

    dead = tmp_path / ".checkpoint.pt.tmp999999999"  # no such process
    live = tmp_path / f".log.csv.tmp{os.getpid()}"
    dead.write_bytes(b"partial")
    live.write_bytes(b"being written")
    make_trainer(tmp_path)
    assert not dead.exists() and live.exists()


def test_an_empty_training_set_is_refused(tmp_path):
    model = Tiny()
    empty = TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, 5))
    with pytest.raises(ValueError, match="training set is empty"):
        Trainer(model, model.groups(), staged_schedule((1, 1, 1)), empty, None, out_dir=tmp_path, progress=False)


def test_cli_attention_none_is_a_plain_model_and_the_default_depends_on_the_task():
    from sca_lib.train import _parser, config_from_args

    def kind(*argv):
        return config_from_args(_parser().parse_args(list(argv))).attention.kind

    assert kind("--mode", "cpu") == "dual"                       # a classifier's default
    assert kind("--mode", "cpu", "--attention", "none") is None  # asked for a plain model: gets one
    assert kind("--mode", "cpu", "--attention", "channel") == "channel"
    assert kind("--task", "detection", "--mode", "cpu") is None  # a detector's default: no trunk attention
    assert kind("--task", "detection", "--mode", "cpu", "--attention", "dual") == "dual"
    assert "dual for a classifier, none for a detector" in " ".join(_parser().format_help().split())


def test_data_workers_fit_the_machine(monkeypatch):
    """The full mode's 8 loader workers become 2 on a 2-CPU machine (a free Colab runtime); 0 stays 0."""
    from sca_lib import train as training

    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert training.MODE_DEFAULTS["full"]["num_workers"] == 8
    assert training.data_workers(8) == 2 and training.data_workers(0) == 0 and training.data_workers(1) == 1
