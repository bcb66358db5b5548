"""Issue 15, item 1: `bench/numerics_table.py --smoke` (a training step of a U-Net for every published recipe and every
scaling × weighting pair, in float32, bf16 and fp16 autocast, at σ = 1e-6, 1 and 1e4) finds no non-finite value: the
published recipes are finite (any σ the loss refuses lies outside the recipe's σ density), and a mismatched pair is
finite or refused with one line naming scaling, weighting and σ. Plus the loss's check (`check_output_weight`) alone."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch
from diffexplore.denoiser import Denoiser
from diffexplore.loss import StandardDiffusionLoss, LearnedWeightingLoss, check_output_weight
from diffexplore.scalings import ScoreScaling, EpsScaling, ConsistencyBoundaryScaling
from diffexplore.sigma_sampling import EDMSampling
from diffexplore.weightings import EDMWeighting, EpsWeighting, UnitWeighting

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import numerics_table as nt  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("numerics") / "smoke.json"
    p = subprocess.run([sys.executable, "bench/numerics_table.py", "--smoke", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def test_published_recipes_finite(smoke):
    "Every published recipe × precision: 0 non-finite D, losses and gradients; refused σ only outside its σ density."
    res, _ = smoke
    pairs = nt.published_recipes()
    assert set(res["published"]) == set(pairs) >= {"EDM", "Eps", "V", "Score", "RF", "MinSNR", "EDM2", "TrigFlow",
                                                   "ConsistencyBoundary", "VWithEDMcNoise"}
    assert res["sigmas"][0] == 1e-6 and res["sigmas"][-1] == pytest.approx(1e4, rel=1e-12)
    for name, per in res["published"].items():
        assert list(per) == ["float32", "bf16 autocast", "fp16 autocast"], name
        lo, hi = pairs[name][2].support
        for prec, c in per.items():
            assert c["out"] == c["loss"] == c["grad"] == 0, (name, prec, c)
            assert all(not lo <= s <= hi for s in c["refused_sigmas"]), (name, prec, c["refused_sigmas"], (lo, hi))
            if prec != "fp16 autocast": assert c["refused"] == 0, (name, prec, c)
    assert res["published"]["Score"]["fp16 autocast"]["refused_sigmas"] == [res["sigmas"][-1]]   # λ_F = σ² = 1e8 at 1e4


def test_mismatched_pairs_finite_or_refused(smoke):
    "Every scaling × every weighting in fp16 at σ = 1e-6 and 1e4: finite, or a one-line ValueError naming the pair and σ."
    res, stdout = smoke
    mis = res["mismatched"]
    assert len(mis) == 8 * 8
    refused = 0
    for name, per in mis.items():
        sn, wn = name.split("/")
        for prec, c in per.items():
            assert c["out"] == c["loss"] == c["grad"] == 0, (name, prec, c)
            for s, msg in zip(c["refused_sigmas"], c["messages"]):
                refused += 1
                assert "\n" not in msg and "Scaling(" in msg and "loss_weighting=" in msg and f"sigma={s:.4g}" in msg, msg
    assert refused >= 10   # ScoreScaling's c_out = 1e8 at σ = 1e4 with EDM's weighting, among others
    assert any("ScoreScaling() with loss_weighting=EDMWeighting(sigma_data=0.5) at sigma=1e+04" in m
               for m in mis["Score/EDM"]["fp16 autocast"]["messages"])
    assert "| Score | " in stdout and "| scaling \\ weighting |" in stdout


def test_check_output_weight_bound():
    "The bound is float16's largest value (65504) on w·c_out² (float32's in float32), from host σ alone."
    den = Denoiser(ScoreScaling())                                        # with UnitWeighting, λ_F = c_out² = σ⁴
    check_output_weight(den, UnitWeighting(), torch.tensor([1.0, 15.99]), torch.float16)       # 65,368 ≤ 65504
    with pytest.raises(ValueError, match=r"^ScoreScaling\(\) with loss_weighting=UnitWeighting\(\) at sigma=16: .*w\*c_out\^2 = 6.55e\+04"):
        check_output_weight(den, UnitWeighting(), torch.tensor([1.0, 16.0]), torch.float16)    # 16⁴ = 65536
    check_output_weight(den, UnitWeighting(), torch.tensor([16.0, 1e4]), torch.float32)        # 1e16: fine in float32
    check_output_weight(den, UnitWeighting(), torch.tensor([16.0]), torch.float16, loss_type="l1")   # l1: w·|c_out| = 256
    cm = Denoiser(ConsistencyBoundaryScaling(0.5, 0.002))                 # λ_F = ((σ − σ_min)/σ)² with EDM's weighting
    check_output_weight(cm, EDMWeighting(0.5), torch.tensor([0.002, 80.0]), torch.float16)
    with pytest.raises(ValueError, match="at sigma=1e-06"): check_output_weight(cm, EDMWeighting(0.5), torch.tensor([1e-6]), torch.float16)
    check_output_weight(lambda net, x, s, c: x, EDMWeighting(0.5), torch.tensor([1e-6]), torch.float16)  # no scaling: passes
    with pytest.raises(ValueError, match=r"by w = 1e\+40"):            # w alone overflows the float32 loss, though λ_F = 1
        check_output_weight(Denoiser(EpsScaling()), EpsWeighting(), torch.tensor([1e-20]), torch.float32)


def _tiny_unet():
    return nt.network(torch.device("cpu"), "tiny")


def test_fp16_overflow_is_real_and_refused_before_the_network():
    """Without the check, ScoreScaling with EDM's weighting at σ = 1e4 under fp16 autocast gives non-finite gradients
    (the fault); through the loss's call it stops in `prepare`, naming the pair and σ, before the network runs."""
    net, x0 = _tiny_unet(), nt.digits(2, torch.device("cpu"))
    lf, den, sig = StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)), Denoiser(ScoreScaling()), torch.full((2,), 1e4)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = lf.loss(net, den, x0, sig, {}, noise=torch.zeros_like(x0))       # the formula alone, unchecked
    loss.mean().backward()
    assert bool(torch.isfinite(loss).all())                                     # the loss itself is finite ...
    assert not all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)   # ... its gradient is not
    calls = []
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ValueError, match=r"ScoreScaling\(\) with loss_weighting=EDMWeighting\(sigma_data=0.5\) at sigma=1e\+04"):
        lf(lambda *a: calls.append(1), den, None, x0, {}, sigmas=sig)
    assert calls == []
    with pytest.raises(ValueError, match="float16"):                            # a float16 input (Lightning's 16-true) too
        lf(net, den, None, x0.half(), {}, sigmas=sig)
    with torch.autocast("cpu", dtype=torch.bfloat16):                           # bf16 has float32's range: accepted
        assert bool(torch.isfinite(lf(net, den, None, x0, {}, sigmas=sig)).all())


def test_learned_weighting_checks_exp_minus_u_on_the_host():
    "EDM2's loss weights the error by λ·e^{−u}: with its head on the host the check includes e^{−u} (u = ±2 at σ = 100)."
    den, x0, sig = Denoiser(EpsScaling()), torch.zeros(1, 1, 4, 4), torch.tensor([100.0])   # λ_F = (1e-4 + 4)·1e4 = 40001
    lf = LearnedWeightingLoss(EDMSampling(), EDMWeighting(0.5), logvar_channels=8)
    with torch.no_grad():
        feats = torch.stack([torch.nn.functional.one_hot(torch.tensor(k), 8).float() for k in range(8)])
        f = torch.stack([(lf.logvar.weight.copy_(e), lf.logvar(sig))[1][0] for e in feats])   # u is linear in the weight: u = f·w
    for u, refused in ((2.0, False), (-2.0, True)):                          # 40001·e^{−u}: 5,414 or 295,563
        with torch.no_grad(): lf.logvar.weight.copy_(u * f / f.square().sum())
        assert lf.logvar(sig).item() == pytest.approx(u, abs=1e-4)
        with torch.autocast("cpu", dtype=torch.float16):
            if refused:
                with pytest.raises(ValueError, match=r"EDMWeighting\(sigma_data=0.5\)\*exp\(-u\) at sigma=100"):
                    lf.prepare(den, None, x0, {}, sigmas=sig)
            else: lf.prepare(den, None, x0, {}, sigmas=sig)
    StandardDiffusionLoss(EDMSampling(), EDMWeighting(0.5)).prepare(den, None, x0, {}, sigmas=sig)   # λ alone passes


def test_sigma_grid_and_refusals():
    "The grid has both ends; `--points` < 2 is refused with one line."
    g = nt.sigma_grid(41)
    assert len(g) == 41 and g[0] == 1e-6 and g[-1] == pytest.approx(1e4, rel=1e-12) and g[20] == pytest.approx(0.1)
    with pytest.raises(SystemExit, match=r"^--points must be >= 2 \(both ends of \[1e-6, 1e4\]\); got --points 1$"):
        nt.main(["--points", "1"])
