"""benchmarks/: the Unet's MAC counter against FlopCounterMode, the fresh-process harness, the suite end to end at
the smallest size (fields and files, never wall time), and README's ratio rows against the committed records."""

import json
import subprocess
import sys
from pathlib import Path

import quadtree  # noqa: F401  (first: the OpenMP wait policy is set before torch loads)
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench_qgn  # noqa: E402
import harness  # noqa: E402
import workloads  # noqa: E402


def test_conv2d_macs_counts_what_flop_counter_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                          nn.Conv2d(8, 5, 1))
    images = torch.randn(2, 3, 32, 48)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    assert workloads.conv2d_macs(model, images) == counter.get_total_flops() // 2


def test_a_failing_worker_gives_an_error_record(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys\nprint('broken: ' + sys.argv[1], file=sys.stderr)\nsys.exit(3)\n")
    record = harness.run_isolated(script, {"x": 1}, {"model": "qgn"}, timeout=60, threads=1)
    assert record["model"] == "qgn" and record["error"].startswith("worker exit 3") and "broken" in record["error"]
    script.write_text(f"import json, sys\nsys.path.insert(0, {str(BENCHMARKS)!r})\nimport harness\n"
                      "harness.print_record({'echo': json.loads(sys.argv[1])})\n")
    assert harness.run_isolated(script, {"x": 1}, {}, timeout=60, threads=1) == {"echo": {"x": 1}}


def test_suite_runs_every_step_of_both_networks_and_writes_its_reports(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_qgn.main(["--sizes", "64x64", "--masks", "street", "--models", "qgn,dense", "--depths", "5",
                           "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    records = json.loads((out / "bench_qgn.json").read_text())
    assert [(r["model"], r["mode"], r["depth"]) for r in records] == [
        ("qgn", "inference", 5), ("qgn", "train", 5), ("dense", "inference", None), ("dense", "train", None)]
    fields = {"model", "mode", "height", "width", "depth", "mask", "batch_size", "images_per_s", "num_classes",
              "peak_memory_mb",
              "peak_rss_mb", "baseline_rss_mb", "peak_reset", "ru_maxrss_mb", "median_ms", "times_ms", "median_cpu_ms",
              "omp_wait_policy", "macs", "nodes_per_level", "tree_source", "params", "device", "amp", "tf32",
              "backend", "threads", "warmup", "repeats", "load_avg_1min", "torch", "active_fraction_per_level",
              "tree_nodes_per_level", "tree_mixed_per_level", "argv"}
    for r in records:
        assert set(r) == fields, r.get("error")
        assert r["macs"] > 0 and len(r["times_ms"]) == 1 and len(r["nodes_per_level"]) == 6
    qgn_inference, qgn_train, dense_inference, _ = records
    assert qgn_inference["nodes_per_level"] == qgn_train["nodes_per_level"] == qgn_inference["tree_nodes_per_level"]
    assert qgn_inference["tree_source"] == "oracle" and dense_inference["tree_source"] is None
    assert dense_inference["nodes_per_level"] == [4 ** level * 4 for level in range(6)]  # every cell of 2x2 roots
    assert dense_inference["macs"] > qgn_inference["macs"]
    assert (out / "bench_qgn.md").is_file() and (out / "bench_qgn.png").is_file()
    assert "| 64x64 | street | 1 | qgn | inference | 5 |" in capsys.readouterr().out


def test_batched_inference_reports_images_per_second(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_qgn.main(["--sizes", "64x64", "--masks", "street", "--models", "qgn", "--modes", "inference",
                           "--depths", "5", "--batch-sizes", "1,3", "--repeats", "1", "--warmup", "0", "--threads",
                           "1", "--out", str(out)]) == 0
    one, three = json.loads((out / "bench_qgn.json").read_text())
    assert (one["batch_size"], three["batch_size"]) == (1, 3)
    assert three["macs"] == one["macs"]  # per image
    assert three["nodes_per_level"] == [3 * n for n in one["nodes_per_level"]]
    assert three["images_per_s"] == pytest.approx(3e3 / three["median_ms"], rel=1e-3)
    text = (out / "bench_qgn.md").read_text()
    assert "images/s, batch 1 | images/s, batch 3" in text and "| 64x64 | street | QGN |" in text
    assert "| 64x64 | street | 3 | qgn | inference | 5 |" in capsys.readouterr().out


def test_ab_compares_two_revisions_step_by_step(tmp_path):
    import bench_ab

    assert bench_ab.main(["--base", "HEAD", "--sizes", "64x64", "--masks", "street", "--rounds", "2", "--warmup",
                          "0", "--workloads", "predict,train,decode", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "ab.json").read_text())
    assert [r["workload"] for r in records] == ["predict", "train", "decode"]
    for r in records:
        assert r["base_ms"] > 0 and r["new_ms"] > 0 and r["new_over_base"] == pytest.approx(
            r["new_ms"] / r["base_ms"], abs=1e-3)
        assert r["base_peak_tensor_mb"] == r["new_peak_tensor_mb"] >= 0  # one revision: the same tensors
    assert "| predict | qgn | 64x64 | street |" in (tmp_path / "ab.md").read_text()
    with pytest.raises(SystemExit, match="not a commit"):
        bench_ab.main(["--base", "no-such-revision", "--out", str(tmp_path)])


def test_readme_ratio_rows_are_those_of_the_committed_records():
    records = json.loads((BENCHMARKS / "results" / "bench_qgn.json").read_text())
    rows = bench_qgn.verdicts(records)[0].splitlines()[2:]
    readme = (ROOT / "README.md").read_text()
    assert rows and all(row in readme for row in rows)


def test_scripts_answer_help():
    for script in ("bench_qgn.py", "bench_density.py"):
        done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0 and "--repeats" in done.stdout, done.stderr


def test_dispatch_counts_ops_and_syncs_of_a_prediction_and_a_training_step(tmp_path):
    import bench_dispatch

    assert bench_dispatch.main(["--sizes", "64x128", "--masks", "street", "--repeats", "1", "--train-repeats", "1",
                                "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "dispatch.json").read_text())
    records = results["predict"]
    whole = "folded, stem whole (GPU path)"
    settings = ("oracle", "oracle's nodes, counted", "argmax")
    assert [(r["setting"], r["model"]) for r in records] == [
        (setting, model) for setting in settings for model in ("folded", whole, "unfolded")]
    folded, stem_whole, unfolded, counted = records[:4]
    assert folded["nodes_per_level"] == stem_whole["nodes_per_level"] == unfolded["nodes_per_level"]
    assert counted["nodes_per_level"] == folded["nodes_per_level"]
    assert 0 < folded["ops"] < unfolded["ops"]  # the folded batch norms are ops no longer dispatched
    assert stem_whole["ops"] == folded["ops"]  # 64 rows: one stripe, the whole stem on the CPU too
    assert folded["syncs"] == 0 and counted["syncs"] == sum(n > 0 for n in folded["nodes_per_level"][1:])
    assert all(r["syncs"] <= 5 for r in records)  # at most one per expanded level
    training = results["train"]
    assert [r["model"] for r in training] == ["qgn", "dense"]
    for r in training:
        assert set(r["ops_per_phase"]) == {"forward", "loss", "backward", "optimizer"}
        assert sum(r["ops_per_phase"].values()) == r["ops"] > 0
        assert r["syncs"] <= 5 + 1 and r["median_ms"] > 0  # QGN: one per expanded level; both: the loss value
    text = (tmp_path / "dispatch.md").read_text()
    assert "| 64x128 | street | oracle | folded |" in text and "| 64x128 | street | qgn |" in text


@pytest.mark.cuda
def test_dispatch_on_a_gpu_reports_host_and_kernel_time(tmp_path):
    import bench_dispatch

    assert bench_dispatch.main(["--sizes", "64x128", "--masks", "street", "--repeats", "2", "--train-repeats", "1",
                                "--device", "cuda", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "dispatch.json").read_text())
    for r in results["predict"] + results["train"]:
        assert r["median_ms"] > 0 and r["host_ms"] > 0 and r["gpu_ms"] > 0 and r["kernels"] > 0
        assert r["cuda_syncs"] >= 0 and r["device"] != "cpu"
    assert "kernels" in (tmp_path / "dispatch.md").read_text()
