"""The pretrained stand-in: rebuilt from the same spec it reproduces its weights and source metrics."""

from __future__ import annotations

import torch

from sca_lib.standin import pretrain_standin, standin_record, weights_digest


def test_rebuilding_the_fast_standin_reproduces_it(tmp_path):
    records = []
    for name in ("a", "b"):
        path = pretrain_standin("mobilenet_v3_small", "fast", 32, data_root=tmp_path / name, progress=False,
                                data_version=2)
        rec = standin_record(path)
        assert rec["weights_digest"] == weights_digest(torch.load(path, map_location="cpu", weights_only=True))
        records.append((path.name, rec))
    (name_a, a), (name_b, b) = records
    assert name_a == name_b, "same spec, same cache key"
    assert a["weights_digest"] == b["weights_digest"]
    assert (a["source_val_mAP"], a["source_val_top1"]) == (b["source_val_mAP"], b["source_val_top1"])
    assert a["spec"] == b["spec"] and a["spec"]["data"]["version"] == 2


def test_weights_digest_sees_every_value_and_name():
    sd = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(3)}
    d = weights_digest(sd)
    assert d == weights_digest({k: v.clone() for k, v in reversed(list(sd.items()))}), "order-free"
    assert d != weights_digest({**sd, "b": torch.tensor([0.0, 0.0, 1e-6])})
    assert d != weights_digest({"w2": sd["w"], "b": sd["b"]})
    assert d != weights_digest({**sd, "b": sd["b"].double()})


def test_synthetic_devkit_overrides_get_a_folder_of_their_own(tmp_path):
    from sca_lib.data.synthetic import read_marker
    from sca_lib.standin import synthetic_devkit

    plain = synthetic_devkit("target", "fast", tmp_path, version=2, n_train=3, n_val=2)
    assert plain != synthetic_devkit("target", "fast", tmp_path, version=2, n_train=3, n_val=2, confusers=3)
    assert read_marker(synthetic_devkit("target", "fast", tmp_path, version=2, n_train=3, n_val=2, confusers=3)
                       )["config"]["confusers"] == 3
    assert synthetic_devkit("target", "fast", tmp_path, version=2, confusers=None) == tmp_path / "synthetic" / "target-fast-v2"
