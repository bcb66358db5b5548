"""The GPU bench scripts that reproduce BENCHMARKS.md rows, run in their CPU smoke modes: they must keep working
between GPU sessions (the numbers themselves come only from the GPU machine)."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_train_throughput_smoke(tmp_path):
    "Two rows, then an interleaved pair: the hand-written step compiled (aot_eager on the CPU) against the engine, and both profiled."
    run("bench/train_throughput.py", "--smoke", "--out", str(tmp_path), "--models", "cifar10", "--rows", "a-bf16,b-bf16,pair-fastest")
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in res["results"]] == ["a-bf16", "b-bf16", "pair-fastest"], res["results"]
    assert all(r["img_s"] > 0 and r["ms_step"] > 0 for r in res["results"][:2])
    pair = res["results"][2]
    assert (pair["hand"]["row"], pair["engine"]["row"], pair["batch"]) == ("a-fastest", "c-big-batch", 8)
    assert len(pair["pairs"]) == 3 and all(p["ratio"] > 0 for p in pair["pairs"])
    assert pair["median_ratio"] == sorted(p["ratio"] for p in pair["pairs"])[1] and pair["target"] == 0.98
    md = (tmp_path / "results.md").read_text()
    assert "b-bf16/a-bf16" in md and "| pair-fastest | a-fastest:" in md
    assert "c-big-batch (engine)" in (tmp_path / "profile.txt").read_text() and "a-fastest (hand-written)" in (tmp_path / "profile.txt").read_text()


def test_grad_accumulation_smoke(tmp_path):
    "accumulate_grad_batches=2: every optimizer step taken, one EMA update each, a finite loss."
    run("bench/grad_accumulation.py", "--smoke", "--out", str(tmp_path))
    res = json.loads((tmp_path / "grad_accumulation.json").read_text())
    assert res["ok"] and res["global_step"] == res["ema_updates"] == 4 and res["accumulate_grad_batches"] == 2, res


def test_cpu_step_time_smoke(tmp_path):
    "One run of this tree (the --compare mode runs the same child on a worktree of another commit)."
    run("bench/cpu_step_time.py", "--out", str(tmp_path), "--steps", "2", "--warmup", "1")
    r = json.loads((tmp_path / "cpu_step_time.json").read_text())["run"]
    assert "error" not in r and r["wall_s_per_step"] > 0 and r["steps"] == 2, r
    assert Path(r["diffexplore"]).resolve().is_relative_to(ROOT)


def test_gpu_sh_refuses_unknown_task(tmp_path):
    p = subprocess.run(["bash", "bench/gpu.sh", "nope", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "unknown task: nope" in p.stderr and "cifar10 latent sampling" in p.stderr
    assert not (tmp_path / "o").exists()


def test_ddp_scaling_smoke_two_processes(tmp_path):
    "Two CPU processes (gloo) through Lightning's DDP launcher, with the DDP options and a profile."
    run("bench/ddp_scaling.py", "--smoke", "--devices", "2", "--static-graph", "--bucket-view", "--profile-steps", "1", "--out", str(tmp_path))
    res = json.loads((tmp_path / "ddp_cifar10_2gpu_static_graph_gradient_as_bucket_view.json").read_text())
    assert res["devices"] == 2 and res["img_s"] > 0 and res["ddp"] == {"static_graph": True, "gradient_as_bucket_view": True}
    assert "profiled steps" in (tmp_path / "ddp_cifar10_2gpu_static_graph_gradient_as_bucket_view_profile.txt").read_text()


def test_sampling_speed_smoke(tmp_path):
    run("bench/sampling_speed.py", "--smoke", "--variants", "eager-fp32", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "sampling_speed.json").read_text())["rows"]
    assert [(r["variant"], r["cfg"], r["network_batch"]) for r in rows] == [("eager-fp32", None, 10), ("eager-fp32", 2.0, 20)]
    assert all(r["img_s"] > 0 and r["nfe"] == 35 for r in rows)


def test_refit_smoke(tmp_path):
    "Two fits of one engine, the second on another thread than the first (CUDA graphs are off on the CPU)."
    run("bench/refit_cudagraphs.py", "--out", str(tmp_path), "--variants", "bg-main", "--steps", "3")
    (res,) = json.loads((tmp_path / "refit_cudagraphs.json").read_text())
    assert res["ok"] and res["fit1_steps"] == res["fit2_steps"] == 3, res


def test_append_rows(tmp_path):
    "The bench scripts' one way of adding rows to BENCHMARKS.md: new section, then rows under the last row, other sections kept."
    sys.path.insert(0, str(ROOT / "bench"))
    from _machine import append_rows
    f = tmp_path / "B.md"; f.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    append_rows(str(f), "## T", "intro line\n", "| a |\n|---|", ["| 1 |"])
    append_rows(str(f), "## T", "intro line\n", "| a |\n|---|", ["| 2 |", "| 3 |"])
    assert f.read_text() == "# Benchmarks\n\n## Other\n\nkeep me\n\n## T\n\nintro line\n\n| a |\n|---|\n| 1 |\n| 2 |\n| 3 |\n"
    append_rows(str(f), "## Other", "", "| b |\n|---|", ["| x |"])   # a section without a table gets one
    assert "keep me\n\n| b |\n|---|\n| x |\n\n## T" in f.read_text()
    f.write_text("# B\n\n## R\n\n### 5\n\n| a |\n|---|\n| 1 |\n\ntext\n\n### 6\n\n| z |\n|---|\n| 9 |\n")
    append_rows(str(f), "### 5", "", "| a |\n|---|", ["| 2 |"])   # a subsection's table, not the last table of its section
    assert "| 1 |\n| 2 |\n\ntext\n\n### 6\n\n| z |\n|---|\n| 9 |\n" in f.read_text(), f.read_text()
