"""Solutions to the exercises of notebook 05 (staged training).

Run them: ``python notebooks/solutions/05_staged_training.py``; ``tests/test_exercises.py`` runs
every ``exercise_*`` function here, so the solutions stay correct as the library changes. Everything
runs offline on the CPU in a few seconds: a MobileNetV3-Small with random weights (``weights=None``),
32 px random images, no data set on disk.
"""

import tempfile

import torch
from torch import nn
from torch.utils.data import TensorDataset

import sca_lib
from sca_lib.engine import Trainer
from sca_lib.groups import GROUPS, parameter_groups, set_trainable
from sca_lib.losses import masked_bce_with_logits
from sca_lib.schedule import expand_schedule, staged_schedule


def tiny_model(seed: int = 0) -> nn.Module:
    """MobileNetV3-Small + dual attention, random weights, 20 classes."""
    torch.manual_seed(seed)
    return sca_lib.build_classifier("mobilenet_v3_small", attention="dual", weights=None)


def random_data(n: int = 16, size: int = 32, classes: int = 20, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (torch.rand(n, classes, generator=g) < 0.15).float()
    return TensorDataset(x, y, torch.zeros(n, classes, dtype=torch.bool))


def lr_of(stages, group: str, epoch: int) -> float:
    """Exercise 1: the piecewise learning rate eta_g(e) of group ``group`` in (1-based) ``epoch``:
    the stage's rate if the stage trains the group, else 0 (frozen)."""
    end = 0
    for s in stages:
        end += s.epochs
        if epoch <= end:
            return s.lr if group in s.groups else 0.0
    raise ValueError(f"epoch {epoch} is past the schedule's {end} epochs")


def exercise_1() -> None:
    stages = staged_schedule(epochs=(1, 1, 1), lrs=(0.1, 0.01, 0.001))
    # the schedule as data: one row per epoch, and the piecewise definition read off it
    rows = expand_schedule(stages)
    assert [r["lr"] for r in rows] == [0.1, 0.01, 0.001]
    expected = {1: {"attention", "head"}, 2: {"attention", "head", "late"}, 3: set(GROUPS)}
    for r in rows:
        assert {g for g in GROUPS if lr_of(stages, g, r["epoch"]) > 0} == expected[r["epoch"]] == set(r["groups"])

    # the engine holds to it: after each epoch, a group has moved exactly when its rate was > 0
    model = tiny_model()
    groups = parameter_groups(model)
    before = {g: [p.detach().clone() for p in ps] for g, ps in groups.items()}
    moved = {}

    class Watch:
        def on_epoch_end(self, trainer, record):
            epoch = record["epoch"]
            moved[epoch] = {g for g, ps in groups.items()
                            if any(not torch.equal(p.detach(), q) for p, q in zip(ps, before[g]))}
            for g, ps in groups.items():
                before[g] = [p.detach().clone() for p in ps]

    with tempfile.TemporaryDirectory() as out:
        Trainer(model, groups, stages, random_data(), None, out_dir=out, batch_size=8, set_trainable=set_trainable,
                progress=False, callbacks=[Watch()], device="cpu").fit(resume=False)
    for epoch, groups_moved in moved.items():
        assert groups_moved == {g for g in GROUPS if lr_of(stages, g, epoch) > 0}, (epoch, groups_moved)


def clip(grads, tau: float):
    """g <- g * min(1, tau / ||g||), with ||g|| the one L2 norm over every gradient together."""
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return [g * torch.clamp(tau / norm, max=1.0) for g in grads], norm


def exercise_2() -> None:
    torch.manual_seed(0)
    tau = 2.0
    for scale in (0.01, 1.0, 100.0):  # norms below, around and far above tau
        params = [nn.Parameter(torch.zeros(5, 3)), nn.Parameter(torch.zeros(7))]
        for p in params:
            p.grad = scale * torch.randn_like(p)
        raw = [p.grad.clone() for p in params]
        by_hand, norm = clip(raw, tau)
        returned = torch.nn.utils.clip_grad_norm_(params, max_norm=tau)
        torch.testing.assert_close(returned, norm)  # it returns the norm *before* clipping
        for p, g in zip(params, by_hand):
            torch.testing.assert_close(p.grad, g)
        after = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
        assert after <= tau * (1 + 1e-5)  # bounded
        torch.testing.assert_close(after, torch.minimum(norm, torch.tensor(tau)))  # exactly min(||g||, tau)
        flat_raw = torch.cat([g.flatten() for g in raw])
        flat_new = torch.cat([p.grad.flatten() for p in params])
        cos = torch.dot(flat_raw, flat_new) / (flat_raw.norm() * flat_new.norm())
        torch.testing.assert_close(cos, torch.tensor(1.0))  # the direction is unchanged
        if norm <= tau:
            for p, g in zip(params, raw):
                torch.testing.assert_close(p.grad, g)  # below tau: left alone


def exercise_3() -> None:
    """Summed over an image's C labels the loss, and so its gradient, is C times the mean over labels:
    the same batch can sit under the clip with one reduction and far over it with the other."""
    torch.manual_seed(0)
    n, c, tau = 16, 20, 2.0
    head = nn.Linear(64, c)
    x = 3 * torch.randn(n, 64)
    y = (torch.rand(n, c) < 0.15).float()
    norms = {}
    for reduction in ("mean", "sum_per_image"):
        head.zero_grad()
        loss = masked_bce_with_logits(head(x), y, reduction=reduction)
        loss.backward()
        norms[reduction] = (loss.item(), torch.sqrt(sum((p.grad ** 2).sum() for p in head.parameters())).item())
    (l_mean, g_mean), (l_sum, g_sum) = norms["mean"], norms["sum_per_image"]
    assert abs(l_sum - c * l_mean) < 1e-4 * l_sum and abs(g_sum - c * g_mean) < 1e-4 * g_sum
    assert g_mean < tau < g_sum, norms  # the clip is a guard for one, the optimiser for the other


def bn_layers(model: nn.Module, group: str):
    """The BatchNorm layers whose parameters belong to ``group``."""
    ids = {id(p) for p in parameter_groups(model)[group]}
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and id(m.weight) in ids]


def exercise_4() -> None:
    model = tiny_model()
    x = random_data(8).tensors[0]
    set_trainable(model, ["attention", "head", "late"])  # stage 2: "early" is frozen
    model.train()  # as the engine does every epoch: frozen BatchNorm must not follow it
    early, late = bn_layers(model, "early"), bn_layers(model, "late")
    assert early and late
    stats = lambda layers: [(m.running_mean.clone(), m.running_var.clone()) for m in layers]  # noqa: E731
    e0, l0 = stats(early), stats(late)
    with torch.no_grad():
        model(x)
    assert all(not m.training for m in early)
    assert all(torch.equal(a, b) and torch.equal(v, w) for (a, v), (b, w) in zip(e0, stats(early)))  # kept
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(l0, stats(late)))  # trainable: updated
    # re-estimation after training leaves the frozen layers' statistics alone too
    from sca_lib.batchnorm import recalibrate_batchnorm

    recalibrate_batchnorm(model, random_data(8, seed=1), batch_size=4)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(e0, stats(early)))
    set_trainable(model, GROUPS)  # stage 3: unfrozen, the layers follow model.train() again
    model.train()
    with torch.no_grad():
        model(x)
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(e0, stats(early)))


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
