"The loss floor: the exact denoiser against brute force and closed forms, loss_floor/bucket_floor against integrals and direct computations, and every error."
import math

import pytest
import torch
from scipy.integrate import quad

from diffexplore.data import DigitsDataModule
from diffexplore.discretizer import LegacyDDPMDiscretization
from diffexplore.engine import DEFAULT_SIGMA_EDGES
from diffexplore.floor import CHUNK_ELEMENTS, _bucket_sigmas, bucket_floor, bucket_sigmas, loss_floor, optimal_denoiser, posterior_weights
from diffexplore.sigma_sampling import DiscreteSampling, EDMSampling, LogUniformSampling
from diffexplore.weightings import EDMWeighting

f64 = torch.float64
PAIR = torch.tensor([[-1.0], [1.0]], dtype=f64)   # the data {−1, +1}: D*(x, σ) = tanh(x/σ²)


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule()
    return dm.train_images(), dm.train_labels(), dm.val_images(), dm.val_labels()


def pair_error(sigma: float) -> float:
    "E[(D*(x0 + σn) − x0)²] for x0 uniform on {−1, +1}, n ~ N(0, 1), by numerical integration (symmetric in x0)."
    f = lambda n: (math.tanh((1 + sigma * n) / sigma**2) - 1) ** 2 * math.exp(-n * n / 2) / math.sqrt(2 * math.pi)
    return quad(f, -40, 40, points=[-1 / sigma], limit=400)[0]   # n = −1/σ: where x_t crosses 0 and D* switches sign


# ---------------------------------------------------------------- the exact denoiser
def _brute_force(x_t, sigma, data):
    "Posterior mean in float64 with Python loops and a max-shift."
    x, d = x_t.reshape(-1).tolist(), data.reshape(len(data), -1).tolist()
    logits = [-sum((a - b) ** 2 for a, b in zip(x, di)) / (2 * sigma**2) for di in d]
    p = [math.exp(l - max(logits)) for l in logits]
    return torch.tensor([sum(pi * di[j] for pi, di in zip(p, d)) / sum(p) for j in range(len(x))], dtype=f64).reshape(x_t.shape)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 4.0, 50.0])
def test_optimal_denoiser_matches_brute_force(sigma):
    g = torch.Generator().manual_seed(1)
    data = torch.randn(40, 1, 3, 3, generator=g, dtype=f64)
    x_t = data[5:6] + sigma * torch.randn(1, 1, 3, 3, generator=g, dtype=f64)
    torch.testing.assert_close(optimal_denoiser(x_t, sigma, data), _brute_force(x_t, sigma, data), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_blocks_do_not_change_the_result(chunk):
    "Streaming over images (online softmax) and blocking rows give the one-block result, for every block size."
    g = torch.Generator().manual_seed(3)
    data = torch.randn(53, 2, 3, 3, generator=g, dtype=f64)
    x_t = data[:11] + torch.logspace(-3, 2, 11, dtype=f64)[:, None, None, None] * torch.randn(11, 2, 3, 3, generator=g, dtype=f64)
    sig = torch.logspace(-3, 2, 11, dtype=f64)
    torch.testing.assert_close(optimal_denoiser(x_t, sig, data, chunk_elements=chunk), optimal_denoiser(x_t, sig, data), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(posterior_weights(x_t, sig, data, chunk_elements=chunk), posterior_weights(x_t, sig, data), rtol=1e-12, atol=1e-13)
    assert CHUNK_ELEMENTS == 2**24


def test_closed_form_tanh_and_limits():
    x = torch.linspace(-3, 3, 61, dtype=f64)[:, None]
    for s in (0.1, 0.5, 1.0, 2.0):
        torch.testing.assert_close(optimal_denoiser(x, s, PAIR), torch.tanh(x / s**2), rtol=0, atol=1e-12)
    g = torch.Generator().manual_seed(2)
    data = torch.randn(30, 2, 4, 4, generator=g, dtype=f64)
    x_t = data[[3, 17]] + 0.01 * torch.randn(2, 2, 4, 4, generator=g, dtype=f64)
    assert torch.equal(optimal_denoiser(x_t, 1e-4, data, chunk_elements=5), data[[3, 17]])   # σ → 0: the nearest image, exactly
    torch.testing.assert_close(optimal_denoiser(x_t, math.inf, data), data.mean(0).expand(2, -1, -1, -1))


def test_float32_inputs_are_as_accurate_as_float64(digits):
    "float32 in, float32 out, computed in float64: equal to the float64 call rounded, even at tiny σ."
    x_train = digits[0][:300]
    x_t = x_train[:8] + 1e-3 * torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for s in (1e-3, 0.1, 1.0, 30.0):
        out = optimal_denoiser(x_t, s, x_train)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, optimal_denoiser(x_t.double(), s, x_train.double()).float(), rtol=0, atol=1e-6)
    w = posterior_weights(x_t, 1e-3, x_train)
    assert w.dtype == torch.float32 and w.shape == (8, 300) and torch.allclose(w.sum(1), torch.ones(8))


def test_denoiser_errors():
    data = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match="sigma=0"): optimal_denoiser(torch.zeros(1, 1, 2, 2), 0.0, data)
    with pytest.raises(ValueError, match="sigma=-1"): optimal_denoiser(torch.zeros(1, 1, 2, 2), -1.0, data)
    with pytest.raises(ValueError, match=r"x_t.shape=\(1, 1, 3, 2\)"): optimal_denoiser(torch.zeros(1, 1, 3, 2), 1.0, data)
    with pytest.raises(ValueError, match=r"sigma.shape=\(3,\)"): posterior_weights(torch.zeros(2, 1, 2, 2), torch.ones(3), data)
    with pytest.raises(ValueError, match="data must hold"): optimal_denoiser(torch.zeros(1, 1, 2, 2), 1.0, data[:0])


# ---------------------------------------------------------------- loss_floor
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_loss_floor_matches_the_integral(sigma):
    r = loss_floor(PAIR, [sigma], n_noise=20000, seed=1)
    assert r["floor"].dtype == r["stderr"].dtype == r["sigma"].dtype == f64
    exact = pair_error(sigma)
    assert abs(r["floor"].item() - exact) < 4 * r["stderr"].item(), (r, exact)
    assert r["stderr"].item() < 0.05 * exact   # the test has power: 4 stderr is a tight band


def test_weighting_multiplies_on_the_same_draws():
    sig = [0.3, 1.0, 3.0]
    plain, weighted = loss_floor(PAIR, sig, n_noise=500), loss_floor(PAIR, sig, n_noise=500, weighting=EDMWeighting(0.5))
    lam = EDMWeighting(0.5)(torch.tensor(sig, dtype=f64))
    torch.testing.assert_close(weighted["floor"], lam * plain["floor"], rtol=1e-14, atol=0)
    torch.testing.assert_close(weighted["stderr"], lam * plain["stderr"], rtol=1e-14, atol=0)
    assert torch.equal(loss_floor(PAIR, sig, n_noise=500)["floor"], plain["floor"])                 # seeded
    assert not torch.equal(loss_floor(PAIR, sig, n_noise=500, seed=1)["floor"], plain["floor"])


def test_class_conditional_and_label_dropout():
    "One image per class: the conditional floor is 0; dropout p mixes in p × the unconditional floor, exactly."
    sig, y = [0.5, 1.0, 2.0], torch.tensor([0, 1])
    uncond = loss_floor(PAIR, sig, n_noise=800)["floor"]
    assert bool((uncond > 0.05).all())
    assert torch.equal(loss_floor(PAIR, sig, n_noise=800, labels=y)["floor"], torch.zeros(3, dtype=f64))
    for p in (0.1, 0.5, 1.0):
        torch.testing.assert_close(loss_floor(PAIR, sig, n_noise=800, labels=y, p_uncond=p)["floor"], p * uncond, rtol=1e-13, atol=0)


def test_class_conditional_on_digits_is_per_class(digits):
    "A class-y draw is denoised by class y's images alone: equal to loss_floor on that class's images."
    x, y = digits[0][:400], digits[1][:400]
    both = loss_floor(x, [0.8], n_noise=300, labels=y, x_eval=x[y == 3], eval_labels=y[y == 3])
    alone = loss_floor(x[y == 3], [0.8], n_noise=300, x_eval=x[y == 3])
    torch.testing.assert_close(both["floor"], alone["floor"], rtol=1e-12, atol=1e-15)
    assert loss_floor(x, [0.8], n_noise=300, x_eval=x[y == 3])["floor"] > both["floor"]   # unconditional is harder


def test_train_floor_vanishes_and_held_out_tends_to_nearest_neighbour(digits):
    x_train, _, x_val, _ = digits
    train, held = loss_floor(x_train, [0.01, 30.0], n_noise=1500), loss_floor(x_train, [0.01, 30.0], n_noise=1500, x_eval=x_val)
    nn = (torch.cdist(x_val.flatten(1).double(), x_train.flatten(1).double()).min(1).values ** 2 / 64).mean().item()
    assert train["floor"][0].item() < 1e-12 < held["floor"][0].item()
    assert abs(held["floor"][0].item() - nn) < 4 * held["stderr"][0].item() and held["stderr"][0].item() < 0.05 * nn, (held, nn)
    var = x_train.double().var(0, correction=0).mean().item()   # σ → ∞: D* is the mean image
    for r in (train, held): assert abs(r["floor"][1].item() - var) < 4 * r["stderr"][1].item()


def test_chunking_in_loss_floor(digits):
    x = digits[0][:200]
    a = loss_floor(x, [0.1, 1.0], n_noise=64, labels=digits[1][:200], p_uncond=0.3)
    b = loss_floor(x, [0.1, 1.0], n_noise=64, labels=digits[1][:200], p_uncond=0.3, chunk_elements=17)
    torch.testing.assert_close(a["floor"], b["floor"], rtol=1e-12, atol=1e-15)


def test_the_inputs_device_gives_the_cpu_result(digits):
    "On the inputs' device (CUDA where there is one; on a CPU machine both sides run on the CPU) the floor is the CPU's."
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = digits[0][:500]
    kw = dict(n_noise=300, labels=digits[1][:500], p_uncond=0.1)
    on_device = loss_floor(x.to(device), [0.2, 2.0], **{**kw, "labels": kw["labels"].to(device)})
    assert on_device["floor"].device.type == "cpu"   # host float64 results, whatever the device
    torch.testing.assert_close(on_device["floor"], loss_floor(x, [0.2, 2.0], **kw)["floor"], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- bucket_floor
def test_bucket_masses_are_cdf_differences():
    s = EDMSampling(-1.2, 1.2)
    b = bucket_floor(PAIR, s, DEFAULT_SIGMA_EDGES, n_per_bucket=20)
    bounds = torch.tensor([0.0, *DEFAULT_SIGMA_EDGES, math.inf], dtype=f64)
    assert len(b) == len(DEFAULT_SIGMA_EDGES) + 1 and all(set(d) == {"floor", "stderr", "n", "mass"} for d in b)
    torch.testing.assert_close(torch.tensor([d["mass"] for d in b], dtype=f64), s.cdf(bounds).diff(), rtol=0, atol=1e-15)
    assert abs(sum(d["mass"] for d in b) - 1) < 1e-12 and all(d["n"] == 20 for d in b)


def test_discrete_sampler_and_empty_buckets():
    ddpm = DiscreteSampling(LegacyDDPMDiscretization(), 1000)
    table = ddpm.pmf()[0].double()
    b = bucket_floor(PAIR, ddpm, (0.01, 0.1, 1.0, 10.0), n_per_bucket=30)
    bounds = [0.0, 0.01, 0.1, 1.0, 10.0, math.inf]
    for d, lo, hi in zip(b, bounds, bounds[1:]):
        assert abs(d["mass"] - ((table >= lo) & (table < hi)).double().mean().item()) < 1e-12
    assert b[0]["mass"] == 0 and b[0]["n"] == 0 and math.isnan(b[0]["floor"]) and math.isnan(b[0]["stderr"])
    e = bucket_floor(PAIR, LogUniformSampling(0.002, 80.0), (0.001, 1.0, 1000.0), n_per_bucket=30)
    assert [d["n"] for d in e] == [0, 30, 30, 0] and math.isnan(e[0]["floor"]) and math.isnan(e[3]["floor"])


def test_bucket_draws_stay_in_their_bucket(monkeypatch):
    "Every σ drawn for a bucket lies in it (seen through the weighting, which receives all σ at once)."
    seen = {}
    def spy(s): seen["s"] = s.clone(); return torch.ones_like(s)
    edges = (0.05, 0.5, 5.0)
    bucket_floor(PAIR, EDMSampling(-1.2, 1.2), edges, n_per_bucket=400, weighting=spy)
    s = seen["s"].reshape(4, 400)
    bounds = [0.0, *edges, math.inf]
    for k in range(4): assert bool(((s[k] >= bounds[k]) & (s[k] < bounds[k + 1])).all())
    assert abs(s[1].log().mean().item() - 0.5 * (math.log(0.05) + math.log(0.5))) < 0.2   # not piled on an edge


def test_bucket_floor_is_loss_floor_averaged_over_the_bucket_density():
    "Coarse check: the bucket floor ≈ mean of loss_floor at the bucket's quantile midpoints (the truncated density)."
    s, w, lo, hi = EDMSampling(-1.2, 1.2), EDMWeighting(0.5), 0.1, 1.0
    b = bucket_floor(PAIR, s, (lo, hi), n_per_bucket=6000, weighting=w, seed=3)[1]
    c = s.cdf(torch.tensor([lo, hi], dtype=f64))
    nodes = s.quantile(c[0] + (c[1] - c[0]) * (torch.arange(40, dtype=f64) + 0.5) / 40)
    r = loss_floor(PAIR, nodes, n_noise=400, weighting=w, seed=4)
    avg, se = r["floor"].mean().item(), (r["stderr"] ** 2).sum().sqrt().item() / 40
    assert abs(b["floor"] - avg) < 4 * math.hypot(b["stderr"], se) + 0.02 * avg, (b, avg, se)


def test_bucket_floor_main_job_settings(digits):
    x, y = digits[0], digits[1]
    b = bucket_floor(x, EDMSampling(-1.2, 1.2), DEFAULT_SIGMA_EDGES, n_per_bucket=300, weighting=EDMWeighting(0.7521), labels=y, p_uncond=0.1)
    f = [d["floor"] for d in b]
    assert f[0] < 1e-6 and f[1] < 1e-6 and f[2] < f[3] < f[4] and all(d["stderr"] < 0.2 * max(d["floor"], 1e-3) for d in b[2:])


def test_bucket_sigmas_contract():
    "float64 [K, n] and [K]; NaN rows for empty buckets; seeded by the generator (default: seed 0); the engine's name still works."
    sig, mass = bucket_sigmas(LogUniformSampling(0.002, 80.0), [0.001, 1.0], 7)
    assert sig.shape == (3, 7) and mass.shape == (3,) and sig.dtype == mass.dtype == f64
    assert torch.isnan(sig[0]).all() and not torch.isnan(sig[1:]).any() and mass[0] == 0
    ddpm = DiscreteSampling(LegacyDDPMDiscretization(), 1000)
    assert torch.isnan(bucket_sigmas(ddpm, DEFAULT_SIGMA_EDGES, 3)[0][0]).all()
    a = bucket_sigmas(EDMSampling(), DEFAULT_SIGMA_EDGES, 5)[0]
    assert torch.equal(a, bucket_sigmas(EDMSampling(), DEFAULT_SIGMA_EDGES, 5, torch.Generator().manual_seed(0))[0])
    assert torch.equal(a, _bucket_sigmas(EDMSampling(), list(DEFAULT_SIGMA_EDGES), 5, torch.Generator().manual_seed(0))[0])
    with pytest.raises(ValueError, match="n must"): bucket_sigmas(EDMSampling(), DEFAULT_SIGMA_EDGES, 0)
    with pytest.raises(ValueError, match="edges"): bucket_sigmas(EDMSampling(), (0.1, math.nan), 3)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kw, name", [
    (dict(sigmas=[0.0]), "sigmas"), (dict(sigmas=[-1.0]), "sigmas"), (dict(sigmas=[math.nan]), "sigmas"),
    (dict(sigmas=[math.inf]), "sigmas"), (dict(sigmas=[]), "sigmas"),
    (dict(x_train=PAIR[:0]), "x_train"), (dict(x_train=PAIR * math.nan), "x_train"), (dict(x_train=torch.ones(3)), "x_train"),
    (dict(x_eval=torch.zeros(3, 2)), "x_eval"), (dict(x_eval=torch.full((3, 1), math.inf)), "x_eval"),
    (dict(labels=torch.tensor([0, 1, 1])), "labels"), (dict(labels=torch.tensor([0.0, 1.0])), "labels"),
    (dict(labels=torch.tensor([0, 1]), p_uncond=1.5), "p_uncond"), (dict(p_uncond=-0.1), "p_uncond"),
    (dict(n_noise=0), "n_noise"), (dict(n_noise=2.0), "n_noise"),
    (dict(x_eval=PAIR, labels=torch.tensor([0, 1])), "eval_labels"), (dict(eval_labels=torch.tensor([0, 1])), "eval_labels"),
    (dict(x_eval=PAIR, labels=torch.tensor([0, 0]), eval_labels=torch.tensor([0, 1])), "eval_labels"),
    (dict(x_eval=PAIR, labels=torch.tensor([0, 1]), eval_labels=torch.tensor([0])), "eval_labels"),
    (dict(loss_type="huber"), "loss_type")])
def test_loss_floor_errors_name_the_parameter(kw, name):
    args = dict(x_train=PAIR, sigmas=[1.0]) | kw
    with pytest.raises(ValueError, match=name) as e: loss_floor(**args)
    assert "\n" not in str(e.value)


def test_l1_and_sampler_errors():
    with pytest.raises(NotImplementedError, match="posterior median"): loss_floor(PAIR, [1.0], loss_type="l1")
    with pytest.raises(NotImplementedError, match="posterior median"): bucket_floor(PAIR, EDMSampling(), (1.0,), loss_type="l1")
    with pytest.raises(TypeError, match="sigma_sampler"): bucket_floor(PAIR, lambda n: torch.rand(n), (0.1, 1.0))
    for edges in ((1.0, 0.1), (0.0, 1.0), (0.1, math.inf), (0.1, 0.1)):
        with pytest.raises(ValueError, match="edges"): bucket_floor(PAIR, EDMSampling(), edges)
    with pytest.raises(ValueError, match="n_per_bucket"): bucket_floor(PAIR, EDMSampling(), (1.0,), n_per_bucket=0)


# ---------------------------------------------------------------- the bench script
def test_bench_script_runs_on_the_cpu(tmp_path):
    "bench/loss_floor_time.py's Fashion-MNIST path, small, on MNIST-format files written here: one row, five buckets, appended under 'Loss floor'."
    import subprocess, sys
    from pathlib import Path
    from test_data import write_mnist   # tiny MNIST-format idx files
    root = Path(__file__).resolve().parents[1]
    data = write_mnist(tmp_path / "fashion", n_train=300, n_test=4)
    out = tmp_path / "B.md"
    p = subprocess.run([sys.executable, "bench/loss_floor_time.py", "--data", "fashion_mnist", "--subset", "300", "--n-per-bucket", "20",
                        "--root", str(data), "--append", str(out)], cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    row = p.stdout.strip().split("\n")[-1]
    assert "fashion_mnist (300 images" in row and row.count(" ± ") == 5 and "10-inf:" in row
    text = out.read_text()
    assert "## Loss floor" in text and row in text
