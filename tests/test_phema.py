"""Post-hoc EMA (`diffexplore.phema`, EDM2 §3 and Appendix C): σ_rel ↔ γ, the power-EMA update, the least-squares
reconstruction against trajectories with a known answer, and the Lightning callback in real digits runs: once per
optimizer step under gradient accumulation, and a resumed run bit-identical to a straight one."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from diffexplore.cli import load_config, train
from diffexplore.phema import (GAMMA_PEAK, SIGMA_REL_MAX, SIGMA_REL_RANGE, PostHocEMA, combined_profile, gamma_to_sigma_rel,
                               list_snapshots, posthoc_state_dict, power_ema_beta, power_profile, profile_inner_product,
                               sigma_rel_to_gamma, snapshot_info, solve_posthoc_coefficients)
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"
QUICK = [*TINY, *NO_FLOOR, "lightning.sample_every_n_steps=0", "lightning.judge_samples=0", "data.params.batch_size=512"]


# --- the formulas ---------------------------------------------------------------------------------------------------

def test_published_gammas_and_round_trips():
    "EDM2 §3: σ_rel 0.05 ↔ γ 16.97, 0.10 ↔ 6.94; both directions round-trip to 1e-10 over the whole branch."
    assert round(sigma_rel_to_gamma(0.05), 2) == 16.97 and round(sigma_rel_to_gamma(0.10), 2) == 6.94
    assert gamma_to_sigma_rel(16.97) == pytest.approx(0.05, abs=1e-4) and gamma_to_sigma_rel(6.94) == pytest.approx(0.10, abs=1e-4)
    for s in np.geomspace(1e-4, SIGMA_REL_MAX, 200):
        assert abs(gamma_to_sigma_rel(sigma_rel_to_gamma(s)) - s) <= 1e-10 * s, s
    for g in [GAMMA_PEAK, *np.geomspace(1e-3, 1e5, 100)]:
        assert abs(sigma_rel_to_gamma(gamma_to_sigma_rel(g)) - g) <= 1e-10 * max(1.0, g), g
    assert SIGMA_REL_MAX == pytest.approx(0.30028, abs=1e-5)   # the peak of σ_rel(γ), at γ = (√5 − 3)/2


@pytest.mark.parametrize("call, needle", [
    (lambda: sigma_rel_to_gamma(0.31), "sigma_rel=0.31"), (lambda: sigma_rel_to_gamma(-0.1), "sigma_rel=-0.1"),
    (lambda: sigma_rel_to_gamma(float("nan")), "sigma_rel=nan"), (lambda: gamma_to_sigma_rel(-1.0), "gamma=-1.0"),
    (lambda: gamma_to_sigma_rel(float("inf")), "gamma=inf"), (lambda: power_ema_beta(0, 7.0), "step=0"),
    (lambda: power_ema_beta(2.5, 7.0), "step=2.5"), (lambda: power_ema_beta(3, -2.0), "gamma=-2.0"),
    (lambda: PostHocEMA(sigma_rels=()), "sigma_rels=[]"), (lambda: PostHocEMA(sigma_rels=(0.05, 0.4)), "sigma_rel=0.4"),
    (lambda: PostHocEMA(every_n_steps=1.5), "every_n_steps=1.5"), (lambda: PostHocEMA(dtype=torch.int64), "dtype=torch.int64"),
    (lambda: solve_posthoc_coefficients([10, 20], [7.0, 7.0], 20, -1.0), "target_gamma=-1.0"),
    (lambda: solve_posthoc_coefficients([], [], 20, 7.0), "same length"),
])
def test_errors_name_the_parameter(call, needle):
    with pytest.raises(ValueError) as e: call()
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_beta_recursion_is_the_profile():
    "The updates θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t add up to the weights (τ^(γ+1) − (τ−1)^(γ+1)) / t^(γ+1)."
    g, rng = sigma_rel_to_gamma(0.05), np.random.default_rng(1)
    theta, ema = rng.normal(size=(500, 3)), np.zeros(3)
    for t in range(1, 501): ema = power_ema_beta(t, g) * ema + (1 - power_ema_beta(t, g)) * theta[t - 1]
    np.testing.assert_allclose(ema, power_profile(500, g) @ theta, rtol=1e-12, atol=1e-12)
    assert power_ema_beta(1, g) == 0.0 and power_profile(500, g).sum() == pytest.approx(1.0, abs=1e-12)


def test_inner_product_closed_form_matches_quadrature():
    "eq. 151 against a numerical integral of the continuous profiles."
    for ta, ga, tb, gb in [(100, 6.94, 300, 16.97), (300, 16.97, 100, 6.94), (250, 2.0, 250, 0.5)]:
        tau = np.linspace(0, min(ta, tb), 400_001)
        pa, pb = (ga + 1) / ta * (tau / ta) ** ga, (gb + 1) / tb * (tau / tb) ** gb
        assert profile_inner_product(ta, ga, tb, gb) == pytest.approx(np.trapezoid(pa * pb, tau), rel=1e-6)


def test_stored_profile_is_one_hot_and_coefficients_sum_to_one():
    g = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    steps, gammas = np.repeat([250, 500, 750, 1000], 2), np.tile(g, 4)
    for k in range(8):
        x = solve_posthoc_coefficients(steps, gammas, steps[k], gammas[k])
        np.testing.assert_allclose(x, np.eye(8)[k], atol=1e-6)
    for s in (0.02, 0.07, 0.2):
        assert solve_posthoc_coefficients(steps, gammas, 1000, sigma_rel_to_gamma(s)).sum() == pytest.approx(1.0, abs=1e-12)


# --- reconstruction of a trajectory with a known answer --------------------------------------------------------------

def _walk_snapshots(tmp_path, T=600, every=60, seed=0):
    "A 2-layer module whose parameters follow seeded random walks with drift; snapshots every `every` steps."
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    n = sum(p.numel() for p in m.parameters())
    traj = torch.cumsum(0.01 * torch.randn(T, n, dtype=torch.float64) + 0.002, 0)
    cb = PostHocEMA(sigma_rels=(0.05, 0.10), every_n_steps=every)
    for t in range(1, T + 1):
        with torch.no_grad(): torch.nn.utils.vector_to_parameters(traj[t - 1].float(), m.parameters())
        cb.update(m, t)
        if t % every == 0: cb.save_snapshot(m, tmp_path)
    return m, traj, cb


def _flat(m, sd): return torch.cat([sd[n].double().reshape(-1) for n, _ in m.named_parameters()])


@pytest.mark.parametrize("sigma_rel", [0.06, 0.075, 0.09])
def test_reconstruction_between_the_stored_widths(tmp_path, sigma_rel):
    """The reconstruction from the files lies within |Σ(ŵ − w)θ| ≤ ‖ŵ − w‖·‖θ − θ̄‖ (+ float32 rounding) of the exact
    average at that width, and ≥ 5× closer to it than either stored average."""
    m, traj, _ = _walk_snapshots(tmp_path)
    g = sigma_rel_to_gamma(sigma_rel)
    exact = torch.from_numpy(power_profile(600, g)) @ traj
    rec = _flat(m, posthoc_state_dict(tmp_path, sigma_rel))
    steps, gammas = np.repeat(np.arange(60, 601, 60), 2), np.tile([sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)], 10)
    x = solve_posthoc_coefficients(steps, gammas, 600, g)
    bound = np.linalg.norm(combined_profile(x, steps, gammas, 600) - power_profile(600, g)) * (traj - traj.mean(0)).norm(dim=0) \
        + np.abs(x).sum() * 1e-5 * traj.abs().max()
    assert ((rec - exact).abs() <= bound).all()
    stored = [_flat(m, posthoc_state_dict(tmp_path, s)) for s in (0.05, 0.10)]
    assert (rec - exact).norm() * 5 < min((s - exact).norm() for s in stored)


def test_stored_width_comes_back_and_earlier_steps(tmp_path):
    "σ_rel 0.10 at the last step is that snapshot's own average; at step 300 only snapshots ≤ 300 count."
    m, traj, _ = _walk_snapshots(tmp_path)
    with safe_open(str(tmp_path / "phema-00000600.safetensors"), "pt") as f:
        own = {n: f.get_tensor(f"ema1/{n}") for n, _ in m.named_parameters()}
    sd = posthoc_state_dict(tmp_path, 0.10)
    for n in own: torch.testing.assert_close(sd[n], own[n], rtol=1e-6, atol=1e-6)
    at300 = _flat(m, posthoc_state_dict(tmp_path, 0.10, step=300))
    torch.testing.assert_close(at300, torch.from_numpy(power_profile(300, sigma_rel_to_gamma(0.10))) @ traj[:300], rtol=1e-5, atol=1e-5)
    info = snapshot_info(tmp_path / "phema-00000300.safetensors")
    assert info["step"] == 300 and info["sigma_rels"] == [0.05, 0.1] and info["dtype"] == "float32"
    assert info["gammas"] == pytest.approx([16.97, 6.94], abs=5e-3) and info["names"] == list(m.state_dict())


def test_bad_snapshot_sets(tmp_path):
    m, _, cb = _walk_snapshots(tmp_path / "a", T=120)
    with pytest.raises(FileNotFoundError, match="no post-hoc EMA snapshots"): posthoc_state_dict(tmp_path / "empty", 0.07)
    with pytest.raises(ValueError, match=r"sigma_rel must be in \[0.01, 0.25\].*sigma_rel=0.005"): posthoc_state_dict(tmp_path / "a", 0.005)
    with pytest.raises(ValueError, match="step=100"): posthoc_state_dict(tmp_path / "a", 0.07, step=100)
    other = PostHocEMA(sigma_rels=(0.05, 0.10)); other.update(torch.nn.Linear(3, 3), 1)   # another model's snapshot in the folder
    other.step = 30; other.save_snapshot(torch.nn.Linear(3, 3), tmp_path / "a")
    with pytest.raises(ValueError, match="phema-00000030.safetensors holds other tensors"): posthoc_state_dict(tmp_path / "a", 0.07)
    assert SIGMA_REL_RANGE == (0.01, 0.25)


def test_state_dict_catches_up_with_the_trainer():
    "A checkpoint taken before the callback's own on_train_batch_end still holds the averages of that step."
    m = torch.nn.Linear(2, 2); cb = PostHocEMA(every_n_steps=0)
    trainer = SimpleNamespace(global_step=0, default_root_dir="/tmp", is_global_zero=True)
    cb.setup(trainer, SimpleNamespace(model=m)); cb.on_train_start(trainer, SimpleNamespace(model=m))
    with torch.no_grad(): m.weight.add_(1.0)
    trainer.global_step = 1   # the optimizer stepped; a checkpoint saves before the callback's on_train_batch_end
    state = cb.state_dict()
    assert state["step"] == 1 and torch.equal(state["averages"][0]["weight"], m.weight)
    trainer.global_step = 5
    with pytest.raises(ValueError, match="run is at step 5 but the averages are at step 1"): cb.on_train_start(trainer, SimpleNamespace(model=m))


# --- in real runs ------------------------------------------------------------------------------------------------------

def _averages(ckpt):
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = next(v for k, v in ck["callbacks"].items() if k.startswith("PostHocEMA"))
    return ck["global_step"], state


def test_resume_is_bit_exact(tmp_path):
    """10 straight steps == 5 + resume + 5: averages in last.ckpt and every snapshot file, byte for byte. Step 5 is
    mid-epoch (2 batches an epoch) and its last.ckpt comes from FinalCheckpoint (5 is not a multiple of 3)."""
    common = [*QUICK, "lightning.checkpoint_every_n_steps=3", "lightning.posthoc_ema.sigma_rels=[0.05,0.1]",
              "lightning.posthoc_ema.every_n_steps=5"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    s = train(load_config(CONFIG, [*common, "trainer.max_steps=10"]), straight, judge=False)
    train(load_config(CONFIG, [*common, "trainer.max_steps=5"]), part, judge=False)
    train(load_config(CONFIG, [*common, "trainer.max_steps=10"]), part, resume=part / "checkpoints/last.ckpt", judge=False)
    (g1, a1), (g2, a2) = _averages(straight / "checkpoints/last.ckpt"), _averages(part / "checkpoints/last.ckpt")
    assert g1 == g2 == a1["step"] == a2["step"] == 10
    for i in range(2):
        for k in a1["averages"][i]: assert torch.equal(a1["averages"][i][k], a2["averages"][i][k]), k
    names = [p.name for p in list_snapshots(straight)]
    assert names == [p.name for p in list_snapshots(part)] == [f"phema-{t:08d}.safetensors" for t in (5, 10)]
    for n in names: assert (straight / "phema" / n).read_bytes() == (part / "phema" / n).read_bytes(), n
    assert s["posthoc_ema"] == {"dir": str(straight / "phema"), "snapshots": [5, 10], "sigma_rels": [0.05, 0.1]}


def test_once_per_optimizer_step_with_gradient_accumulation(tmp_path):
    """accumulate_grad_batches=2: 3 optimizer steps are 3 updates (snapshots at steps 1, 2, 3, not per micro-batch),
    and after step 1 both averages are the step-1 weights (β_1 = 0), as they would not be after a micro-batch update."""
    train(load_config(CONFIG, [*QUICK, "trainer.max_steps=3", "trainer.accumulate_grad_batches=2",
                               "lightning.posthoc_ema={sigma_rels: [0.05, 0.1], every_n_steps: 1}"]), tmp_path, judge=False)
    step, state = _averages(tmp_path / "checkpoints/last.ckpt")
    assert step == state["step"] == 3 and [p.name for p in list_snapshots(tmp_path)] == [f"phema-{t:08d}.safetensors" for t in (1, 2, 3)]
    with safe_open(str(tmp_path / "phema/phema-00000001.safetensors"), "pt") as f:
        keys = [k[5:] for k in f.keys() if k.startswith("ema0/")]
        assert all(torch.equal(f.get_tensor(f"ema0/{k}"), f.get_tensor(f"ema1/{k}")) for k in keys)
    with safe_open(str(tmp_path / "phema/phema-00000003.safetensors"), "pt") as f:
        assert not all(torch.equal(f.get_tensor(f"ema0/{k}"), f.get_tensor(f"ema1/{k}")) for k in keys)
