"""A network that returns NaN from global step K on (issue 15, item 5): training stops with one line naming the step
and the σ of the batch, no NaN reaches the weights or the EMA, and the last checkpoint written before it is intact and
loads with `cli.load_engine`. Both checks of the engine are run: read on the host every step (the CPU default, and
`sync_checks=True`), and kept on the device with a fused AdamW (`sync_checks=False`, the GPU default), where the
optimizer skips the bad step through its `found_inf` and the error comes one step later, naming step K."""
import math, re
from pathlib import Path
import pytest
import torch
from diffexplore import cli
from diffexplore.engine import NonFiniteLossError
from _runs import TINY, NO_FLOOR

CONFIG = Path(__file__).parent.parent / "configs" / "digits.yaml"
K, EVERY = 5, 2   # NaN from global step 5 on; a checkpoint every 2 steps (steps 2 and 4 before it)


def _poisoned(build, engines: list, snapshots: dict, deferred: bool, k: int = K):
    """`cli.build_engine`, with a network whose output is NaN from global step K on (training only); the engine is kept,
    and `snapshots[g]` holds the weights at the start of global step g (after g optimizer steps)."""
    def build_engine(cfg, dm=None):
        e = build(cfg, dm)
        if deferred: e.sync_checks, e.fused_optimizer = False, True
        forward = e.model.forward
        def nan_from_k(x, c_noise, cond, **kw):
            if e.training: snapshots.setdefault(e.global_step, [p.detach().clone() for p in e.model.parameters()])
            out = forward(x, c_noise, cond, **kw)
            return out * float("nan") if e.training and e.global_step >= k else out
        e.model.forward = nan_from_k
        engines.append(e)
        return e
    return build_engine


def _finite(tensors) -> bool: return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("deferred", [False, True], ids=["host-check", "device-check"])
def test_nan_at_step_k_stops_with_step_and_sigma_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, deferred):
    engines, snapshots = [], {}
    monkeypatch.setattr(cli, "build_engine", _poisoned(cli.build_engine, engines, snapshots, deferred))
    cfg = cli.load_config(CONFIG, [*TINY, *NO_FLOOR, "trainer.max_steps=10", "lightning.sample_every_n_steps=0",
                                   f"lightning.checkpoint_every_n_steps={EVERY}", "lightning.judge_samples=0", "data.params.batch_size=16"])
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err: cli.train(cfg, run, judge=False)
    msg = str(err.value)
    assert "\n" not in msg and f"non-finite loss at global step {K}:" in msg, msg
    sigmas = [float(s) for s in re.search(r"at sigma=\[([^\]]*)\]", msg).group(1).split(",")]
    assert 1 <= len(sigmas) <= 4 and all(math.isfinite(s) and s > 0 for s in sigmas), msg

    e = engines[0]
    assert _finite(e.model.parameters()) and _finite(e.model_ema.shadows())   # the NaN reached neither
    ckpt_dir = run / "checkpoints"
    assert not (ckpt_dir / "interrupted.ckpt").exists()                        # no checkpoint of the failed state
    last = ckpt_dir / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    # host check: raised in step K before its backward, the last checkpoint is that of step 4; device check: step K's
    # update was skipped on the device, its checkpoint (global step 6) holds the weights of step K, and the error came at step 6
    assert ck["global_step"] == (K + 1 if deferred else K - 1)
    assert msg.endswith(f"The last good checkpoint is {last} (global step {ck['global_step']}).") and "no update was made from it" in msg, msg
    loaded = cli.load_engine(last)
    assert _finite(loaded.model.parameters()) and _finite(loaded.model_ema.shadows())
    assert int(loaded.model_ema.num_updates) == ck["global_step"]
    assert max(snapshots) == K                                                  # no step ran after the bad one
    saved = snapshots[K if deferred else K - 1]                                 # device check: step K left the weights as they were
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.parameters(), saved))
    x = loaded.generate(2, class_labels=[0, 1], seed=0)
    assert torch.isfinite(x).all()


def test_nan_at_the_first_step_says_there_is_no_checkpoint(tmp_path, monkeypatch):
    "The message once claimed 'the last checkpoint on disk is the last good one' when the run had written none."
    monkeypatch.setattr(cli, "build_engine", _poisoned(cli.build_engine, [], {}, False, k=0))
    cfg = cli.load_config(CONFIG, [*TINY, *NO_FLOOR, "trainer.max_steps=4", "lightning.sample_every_n_steps=0",
                                   "lightning.checkpoint_every_n_steps=2", "lightning.judge_samples=0", "data.params.batch_size=16"])
    with pytest.raises(NonFiniteLossError) as err: cli.train(cfg, tmp_path / "run", judge=False)
    msg = str(err.value)
    assert "non-finite loss at global step 0:" in msg and msg.endswith("No checkpoint was written before it."), msg
    assert not list((tmp_path / "run").rglob("*.ckpt"))
