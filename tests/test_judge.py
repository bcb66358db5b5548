"Tests of diffexplore.judge: the real-data classifier, its disk cache, judge_samples and FID's refusal message."
import json

import numpy as np
import pytest
import torch

import diffexplore.judge as judge
from diffexplore.data import ArrayDataModule, DigitsDataModule
from diffexplore.judge import (INCEPTION_WEIGHTS_FILE, SmallClassifier, classifier_accuracy, fid, judge_samples,
                               predict, train_classifier)


@pytest.fixture(scope="module")
def digits():
    return DigitsDataModule()


@pytest.fixture(scope="module")
def clf(digits, tmp_path_factory):
    return train_classifier(digits, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def counting_fit(monkeypatch):
    "Replace the training loop by one that only counts its calls (the cache logic is what is under test)."
    calls = []
    def fake_fit(model, x, y, epochs, batch_size, lr, seed, progress=False):
        calls.append(len(x)); return model.eval()
    monkeypatch.setattr(judge, "_fit", fake_fit)
    return calls


def test_real_heldout_accuracy(digits, clf):
    acc = classifier_accuracy(clf, digits.val_images(), digits.val_labels())
    assert acc >= 0.95
    assert clf.meta["real_accuracy"] == pytest.approx(acc)
    assert clf.meta["epochs"] == 30 and clf.meta["cached"] is False


def test_noise_scores_near_chance(clf):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(3000, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.arange(3000) % 10
    assert classifier_accuracy(clf, noise, labels) < 0.3
    gauss = torch.randn(3000, 1, 8, 8, generator=g)  # overshooting values are clamped, not an error
    assert classifier_accuracy(clf, gauss, labels) < 0.3


def test_cache_loads_without_training(digits, tmp_path, counting_fit):
    a = train_classifier(digits, cache_dir=tmp_path)
    b = train_classifier(digits, cache_dir=tmp_path)
    assert counting_fit == [len(digits.train_images())]          # trained once
    assert a.meta["cached"] is False and b.meta["cached"] is True and a.meta["key"] == b.meta["key"]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert len(list(tmp_path.glob("classifier-digits-1x8x8-*.pt"))) == 1
    assert not b.training


def test_cache_key_changes_with_data_settings_and_version(digits, tmp_path, counting_fit, monkeypatch):
    train_classifier(digits, cache_dir=tmp_path)
    train_classifier(DigitsDataModule(seed=1), cache_dir=tmp_path)     # other split: other training data
    train_classifier(digits, cache_dir=tmp_path, epochs=2)              # other settings
    monkeypatch.setattr(judge, "CLASSIFIER_VERSION", judge.CLASSIFIER_VERSION + 1)
    train_classifier(digits, cache_dir=tmp_path)                        # other classifier version
    assert len(counting_fit) == 4 and len(list(tmp_path.glob("classifier-*.pt"))) == 4


def test_cache_dir_from_environment_and_disabled(digits, tmp_path, counting_fit, monkeypatch):
    monkeypatch.setenv("DIFFEXPLORE_CACHE", str(tmp_path / "envcache"))
    train_classifier(digits)
    assert len(list((tmp_path / "envcache").glob("classifier-digits-*.pt"))) == 1
    train_classifier(digits, cache_dir=False); train_classifier(digits, cache_dir=False)
    assert len(counting_fit) == 3                                       # no cache: trains every time


def test_corrupt_cache_is_retrained(digits, tmp_path, counting_fit):
    train_classifier(digits, cache_dir=tmp_path)
    path = next(tmp_path.glob("classifier-*.pt"))
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable classifier cache"):
        c = train_classifier(digits, cache_dir=tmp_path)
    assert len(counting_fit) == 2 and c.meta["cached"] is False
    assert train_classifier(digits, cache_dir=tmp_path).meta["cached"] is True   # rewritten


def test_training_is_seeded(tmp_path):
    dm = ArrayDataModule(np.random.default_rng(0).integers(0, 256, (256, 8, 8)), labels=np.arange(256) % 2, val_fraction=0)
    a = train_classifier(dm, epochs=1, cache_dir=False)
    b = train_classifier(dm, epochs=1, cache_dir=False)
    c = train_classifier(dm, epochs=1, seed=1, cache_dir=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head[1].weight, c.head[1].weight)
    assert a.meta["real_accuracy"] is None                              # no held-out split
    assert torch.get_num_threads() >= 1


def test_bad_inputs_are_named(digits, clf):
    unl = ArrayDataModule(np.zeros((16, 8, 8)), val_fraction=0)
    with pytest.raises(ValueError, match="num_classes=None"): train_classifier(unl, cache_dir=False)
    with pytest.raises(ValueError, match="images.shape"): predict(clf, torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"): predict(clf, torch.full((2, 1, 8, 8), float("inf")))
    with pytest.raises(ValueError, match="labels"): classifier_accuracy(clf, torch.zeros(4, 1, 8, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="labels"): judge_samples(torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), digits, classifier=clf)


def test_judge_samples_report(digits, clf):
    xv, yv = digits.val_images(), digits.val_labels()
    idx = torch.arange(1200) % len(xv)
    good = judge_samples(xv[idx], yv[idx], digits, classifier=clf)
    bad = judge_samples(torch.rand(1200, 1, 8, 8) * 2 - 1, yv[idx], digits, classifier=clf)
    assert good["n"] == 1200 and good["accuracy"] >= 0.95 and bad["accuracy"] < 0.3
    assert good["chance"] == pytest.approx(0.1)
    assert good["real_accuracy"] == clf.meta["real_accuracy"]
    assert set(good["per_class_accuracy"]) == set(digits.class_names)
    assert sum(good["predicted_fraction"].values()) == pytest.approx(1.0)
    assert good["accuracy_stderr"] == pytest.approx(np.sqrt(good["accuracy"] * (1 - good["accuracy"]) / 1200))
    assert good["classifier_fid"] < bad["classifier_fid"]
    if judge.fid_unavailable_reason() is not None:
        assert good["fid"] is None and "FID cannot run here" in good["fid_message"]
    json.dumps(good)                                                     # plain Python values
    quiet = judge_samples(xv[:10], yv[:10], digits, classifier=clf, compute_fid=False)
    assert quiet["fid"] is None and quiet["fid_message"] is None


def test_judge_samples_trains_through_the_cache(digits, tmp_path, counting_fit):
    xv, yv = digits.val_images()[:20], digits.val_labels()[:20]
    judge_samples(xv, yv, digits, cache_dir=tmp_path, compute_fid=False)
    judge_samples(xv, yv, digits, cache_dir=tmp_path, compute_fid=False)
    assert len(counting_fit) == 1


def test_fid_in_classifier_features(digits, clf):
    xt, xv = digits.train_images(), digits.val_images()
    assert fid(xt, xt, feature=clf) == pytest.approx(0.0, abs=1e-2)
    assert fid(xt, xv, feature=clf) < 0.1 * fid(xt, torch.rand(500, 1, 8, 8) * 2 - 1, feature=clf)
    with pytest.raises(ValueError, match="at least 2"): fid(xt, xv[:1], feature=clf)
    with pytest.raises(ValueError, match="image shape"): fid(xt, torch.zeros(4, 1, 9, 9), feature=clf)


def test_fid_refuses_with_a_clear_message_and_no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFEXPLORE_CACHE", str(tmp_path))
    monkeypatch.delenv("DIFFEXPLORE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    def no_download(*a, **k): raise AssertionError("fid must not download")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with pytest.raises(RuntimeError) as e: fid(x, x)
    msg = str(e.value)
    assert INCEPTION_WEIGHTS_FILE in msg and str(tmp_path / INCEPTION_WEIGHTS_FILE) in msg and "inception_weights=" in msg
    assert "never downloads" in msg and "DIFFEXPLORE_INCEPTION_WEIGHTS" in msg
    if not judge._torch_fidelity_available(): assert "pip install torch-fidelity" in msg
    # torch-fidelity present but no weights: the message is about the weights only
    monkeypatch.setattr(judge, "_torch_fidelity_available", lambda: True)
    with pytest.raises(RuntimeError) as e: fid(x, x)
    assert INCEPTION_WEIGHTS_FILE in str(e.value) and "pip install" not in str(e.value)
    with pytest.raises(RuntimeError, match="/no/such/weights.pth"): fid(x, x, inception_weights="/no/such/weights.pth")


def test_fid_passes_local_weights_and_uint8_rgb_to_torchmetrics(monkeypatch, tmp_path):
    weights = tmp_path / "w.pth"; weights.write_bytes(b"stand-in")
    seen = {"kwargs": None, "batches": []}
    class FakeFID:
        def __init__(self, **kw): seen["kwargs"] = kw
        def update(self, imgs, real): seen["batches"].append((imgs, real))
        def compute(self): return torch.tensor(12.5)
    monkeypatch.setattr(judge, "_torch_fidelity_available", lambda: True)
    monkeypatch.setattr(judge, "FrechetInceptionDistance", FakeFID)
    real = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    assert fid(real, real, inception_weights=weights) == 12.5
    assert seen["kwargs"] == {"feature": 2048, "feature_extractor_weights_path": str(weights)}
    imgs, is_real = seen["batches"][0]
    assert imgs.dtype == torch.uint8 and imgs.shape == (2, 3, 4, 4) and is_real is True
    assert imgs[0].unique().tolist() == [0] and imgs[1].unique().tolist() == [255]
    assert [r for _, r in seen["batches"]] == [True, False]
    monkeypatch.setenv("DIFFEXPLORE_INCEPTION_WEIGHTS", str(weights))  # found through the environment too
    assert fid(real, real) == 12.5 and seen["kwargs"]["feature_extractor_weights_path"] == str(weights)
    with pytest.raises(ValueError, match="1 or 3 channels"): fid(torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4))


def test_small_classifier_shapes():
    assert SmallClassifier(3, 4, 64)(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    assert SmallClassifier(1, 10, 32).features(torch.zeros(2, 1, 32, 32)).shape == (2, SmallClassifier.feature_dim)
    with pytest.raises(ValueError, match="image_size=3"): SmallClassifier(1, 10, 3)


def test_classifier_training_shows_steps_with_eta_on_stderr(capsys):
    "The judge is not silent: `progress=True` draws a step bar (total steps and an ETA) while the classifier trains."
    from diffexplore.data import DigitsDataModule
    judge.train_classifier(DigitsDataModule(), epochs=1, cache_dir=False, progress=True)
    err = capsys.readouterr().err
    assert "judge: training its classifier" in err and "/11" in err, err[-500:]  # 1,438 // 128 = 11 steps
    judge.train_classifier(DigitsDataModule(), epochs=1, cache_dir=False)
    assert "judge" not in capsys.readouterr().err  # off by default (library calls, notebooks)


def test_real_halves_are_disjoint_and_depend_only_on_the_seed():
    "The two reference sets of the real-vs-real Fréchet distance: disjoint, all real images pooled, fixed by `seed`."
    dm = DigitsDataModule(); dm.setup()
    a, b = judge.real_halves(dm)
    pool = torch.cat([dm.train_images(), dm.val_images()])
    assert a.shape == b.shape == (len(pool) // 2, *pool.shape[1:])
    rows = lambda t: {tuple(r.flatten().tolist()) for r in t}
    assert len(rows(pool)) == len(pool) and not rows(a) & rows(b)         # the 1,797 digits are distinct; the halves share none
    assert rows(a) | rows(b) <= rows(pool)
    a2, _ = judge.real_halves(dm); a3, _ = judge.real_halves(dm, seed=1)
    assert torch.equal(a, a2) and not torch.equal(a, a3)
