"""Reference lines (chance and prior) and BatchNorm re-estimation."""

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from sca_lib.backbones import build_classifier
from sca_lib.baselines import chance_map, chance_top1, class_prior, labels_of, prior_logits, prior_loss, reference_lines
from sca_lib.batchnorm import recalibrate_batchnorm
from sca_lib.groups import set_trainable
from sca_lib.losses import masked_bce_with_logits
from sca_lib.metrics import mean_average_precision


def split(n, seed, rate=0.1, c=6):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, c, generator=g) < rate).float()
    y[0] = 1
    return y, torch.rand(n, c, generator=g) < 0.05


def test_chance_map_is_the_positive_rate_not_one_over_c():
    y, ig = split(2000, 0, rate=0.2)
    c = chance_map(y, ig, draws=20)
    assert c["draws"] == 20 and c["sd"] > 0 and c["mean"] <= c["max"]
    assert c["mean"] == pytest.approx(0.2, abs=0.02)  # about the share of positives (1/C would be 0.17)
    # the mean equals the mAP of random scores drawn from the same generator
    rng = np.random.default_rng(0)
    assert chance_map(y, ig, draws=1)["mean"] == pytest.approx(mean_average_precision(rng.random(y.shape), y, ig))


def test_chance_top1_is_exact():
    y = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    ig = torch.tensor([[False, True, False, False], [False, False, False, False], [False] * 4])
    assert chance_top1(y, ig) == pytest.approx((1 / 3 + 2 / 4) / 2)  # the image without positives is left out
    rng = np.random.default_rng(0)
    from sca_lib.metrics import top1_accuracy
    sim = np.mean([top1_accuracy(rng.random(y.shape), y, ig) for _ in range(4000)])
    assert sim == pytest.approx(chance_top1(y, ig), abs=0.02)


def test_prior_is_the_training_frequency_and_no_constant_predictor_beats_its_loss():
    ty, tig = split(500, 1, rate=0.15)
    vy, vig = split(300, 2, rate=0.15)
    p = class_prior(ty, tig)
    keep = (~tig).float()
    assert np.allclose(p, ((ty * keep).sum(0) / keep.sum(0)).numpy(), atol=1e-6)
    loss = prior_loss(ty, tig, vy, vig)
    logits = torch.tensor(prior_logits(ty, tig), dtype=torch.float32)
    assert loss == pytest.approx(float(masked_bce_with_logits(logits.expand_as(vy), vy, vig)))
    # on the training split itself the frequency logits minimise the BCE of any constant predictor
    own = prior_loss(ty, tig, ty, tig)
    for shift in (-0.3, 0.3):
        assert own < float(masked_bce_with_logits((logits + shift).expand_as(ty), ty, tig))


def test_reference_lines_keys_and_labels_of_every_data_set_kind():
    y, ig = split(40, 3)
    ref = reference_lines((y, ig), (y, ig), draws=5)
    assert set(ref) == {"chance_mAP", "chance_mAP_sd", "chance_mAP_max", "chance_draws", "chance_top1", "prior_mAP",
                        "prior_top1", "prior_val_loss"}
    ds = TensorDataset(torch.zeros(40, 1), y, ig)
    got_y, got_ig = labels_of(Subset(Subset(ds, list(range(10, 40))), [0, 5]))
    assert torch.equal(got_y, y[[10, 15]]) and torch.equal(got_ig, ig[[10, 15]])

    class VOCLike:  # the devkit's labels: 1 positive, 0 difficult only, -1 negative
        labels = torch.tensor([[1, 0, -1], [-1, -1, 1]], dtype=torch.int8)

    ly, lig = labels_of(VOCLike())
    assert ly.tolist() == [[1, 0, 0], [0, 0, 1]] and lig.tolist() == [[False, True, False], [False, False, False]]


def test_recalibration_leaves_frozen_batchnorm_alone_and_reestimates_the_rest():
    torch.manual_seed(0)
    model = build_classifier("resnet18", num_classes=4)
    bns = dict((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    for m in bns.values():  # "pretrained" statistics
        m.running_mean.fill_(0.5)
        m.running_var.fill_(2.0)
    set_trainable(model, ["head", "late"])  # early layers (and their BN) frozen
    frozen = {n for n, m in bns.items() if not m.weight.requires_grad}
    assert frozen and len(frozen) < len(bns)
    data = TensorDataset(torch.randn(8, 3, 32, 32))
    assert recalibrate_batchnorm(model, data, batch_size=4) == 2
    for n, m in bns.items():
        if n in frozen:  # kept, not reset to mean 0 / var 1
            assert torch.all(m.running_mean == 0.5) and torch.all(m.running_var == 2.0), n
        else:
            assert not torch.all(m.running_mean == 0.5), n
