import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quadtree as qt
from qgn_cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "street_mask.png"


def test_encode_decode_round_trip_for_every_mask_format(tmp_path):
    rng = np.random.default_rng(0)
    masks = {}
    for suffix in (".png", ".npy", ".tif"):
        masks[suffix] = rng.integers(0, 5, (37, 50)).astype(np.uint8)
        qt.write_mask(tmp_path / f"in{suffix[1:]}{suffix}", masks[suffix])
    inputs = sorted(str(p) for p in tmp_path.glob("in*"))
    assert main(["encode", *inputs, "--depth", "3", "--out", str(tmp_path / "trees")]) == 0
    trees = sorted(str(p) for p in (tmp_path / "trees").glob("*.npz"))
    assert len(trees) == 3
    assert main(["decode", *trees, "--out", str(tmp_path / "out"), "--format", "npy"]) == 0
    for suffix, mask in masks.items():
        assert np.array_equal(np.load(tmp_path / "out" / f"in{suffix[1:]}.npy"), mask)


def test_stats_of_masks_and_trees_as_json(tmp_path, capsys):
    assert main(["encode", str(EXAMPLE), "--depth", "5", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["stats", str(EXAMPLE), str(tmp_path / "street_mask.npz"), "--depth", "5", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 and records[0]["total_nodes"] == records[1]["total_nodes"] > 0
    tree = qt.encode(qt.read_mask(EXAMPLE), 5)
    assert [level["nodes"] for level in records[0]["levels"]] == [level.num_nodes for level in tree.levels]


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["stats", str(EXAMPLE)]) == 2
    assert "pass --depth" in capsys.readouterr().err
    assert main(["encode", str(EXAMPLE), "--depth", "12", "--out", str(tmp_path)]) == 2
    assert "too deep" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "missing.npz"), "--out", str(tmp_path)]) == 2
    assert "no quadtree file" in capsys.readouterr().err


def test_console_script_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "qgn_cli", "stats", str(EXAMPLE), "--depth", "5"],
                            capture_output=True, text=True, check=True)
    assert "total nodes" in result.stdout


def test_train_flags_override_the_config_file(tmp_path, capsys):
    import yaml

    from qgn.checkpoint import load_checkpoint

    config = {"model": {"num_classes": 6, "depth": 3, "encoder_channels": [8, 12], "decoder_channels": [12, 10, 8, 6]},
              "data": {"dataset": "synthetic:4,size=32"},
              "train": {"epochs": 5, "batch_size": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--epochs", "1", "--crop", "32", "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["data"]["augment"]["crop"] == [32, 32]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["step"] == 2
    assert "done:" in capsys.readouterr().out
    # --resume reads RUN_DIR/config.yaml; more epochs continue the run.
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["step"] == 4


def test_train_reports_bad_input(tmp_path, capsys):
    assert main(["train", "--data", "synthetic:4,size=64", "--crop", "48", "--out", str(tmp_path / "r")]) == 2
    assert "multiple of" in capsys.readouterr().err
    assert main(["train", "--data", "nosuch:x", "--out", str(tmp_path / "r")]) == 2
    assert "valid data sets" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: {num_class: 3}\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "unknown QGNConfig fields" in capsys.readouterr().err
    assert main(["train", "--data", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path / "r")]) == 2
    assert "folder data sets need the number of classes: pass --num-classes C" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from qgn import QGNConfig
    from training.config import RunConfig, TrainConfig
    from training.datasets import DataConfig
    from training.trainer import train
    from training.transforms import AugmentConfig

    out = tmp_path_factory.mktemp("run")
    config = RunConfig(
        model=QGNConfig(num_classes=6, depth=3, encoder_channels=(8, 12), decoder_channels=(12, 10, 8, 6)),
        data=DataConfig(dataset="synthetic:4,size=32", augment=AugmentConfig(crop=(32, 32))),
        train=TrainConfig(epochs=1, batch_size=2, progress=False))
    train(config, out)
    return out / "last.pt"


def test_eval_every_depth_and_sweep(tmp_path, tiny_checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--limit", "2", "--json", str(tmp_path / "e.json")]) == 0
    records = json.loads((tmp_path / "e.json").read_text())
    assert [r["max_depth"] for r in records] == [0, 1, 2, 3]
    assert {"miou", "iou", "nodes_per_level", "macs", "latency_ms", "peak_memory_mb"} <= set(records[0])
    assert (tmp_path / "e.png").is_file() and "| qgn | depth 0 |" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--limit", "1", "--sweep",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert len(json.loads((tmp_path / "s.json").read_text())) == 4 + 5
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--max-depth", "7"]) == 2
    assert "0..3" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_runs_written_with_the_model_facts_also_in_the_data_section_resume_and_predict(tmp_path, tiny_checkpoint,
                                                                                      capsys):
    """config.yaml and checkpoints (version 1) of the layout before: data.num_classes, depth, in_channels and
    ignore_index beside the model's. They load; a data section that contradicts the model is refused, naming the
    field's home."""
    import shutil

    import torch
    import yaml

    from qgn import load_predictor
    from qgn.checkpoint import load_checkpoint
    from training.config import RunConfig
    from training.datasets import dataset_for

    run = tmp_path / "old"
    shutil.copytree(tiny_checkpoint.parent, run)
    before = {"num_classes": 6, "ignore_index": 255, "depth": 3, "in_channels": 3}
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run / name)
        state["config"]["data"].update(before)
        torch.save(state, run / name)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(before)
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    predictor = load_predictor(run / "best.pt")
    stored = RunConfig.from_dict(predictor.config)  # what qgn eval reads
    assert stored.model == predictor.model.config and stored.model.depth == 3
    assert len(dataset_for(stored.data, stored.model, stored.data.dataset, "val")) == 4
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 4
    assert not set(before) & set(yaml.safe_load((run / "config.yaml").read_text())["data"])  # one home now

    config["data"]["depth"] = 4
    (tmp_path / "contradicts.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "contradicts.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "data.depth = 4 contradicts model.depth = 3" in capsys.readouterr().err


def test_a_single_tree_decodes_to_one_mask_file_and_a_batch_to_one_png_per_image(tmp_path):
    mask = np.arange(48, dtype=np.uint8).reshape(6, 8) % 3
    qt.save(qt.encode(mask, 1), tmp_path / "one.npz")
    qt.save(qt.encode(np.stack([mask, mask[::-1]]), 1), tmp_path / "two.npz")
    assert main(["decode", str(tmp_path / "one.npz"), str(tmp_path / "two.npz"), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["one.png", "two_0.png", "two_1.png"]
    assert np.array_equal(qt.read_mask(tmp_path / "o" / "two_1.png"), mask[::-1])
    assert main(["decode", str(tmp_path / "two.npz"), "--format", "tiff", "--out", str(tmp_path / "t")]) == 0
    assert qt.read_mask(tmp_path / "t" / "two.tiff").shape == (2, 6, 8)


def test_infer_writes_labels_tree_and_overlay(tmp_path, tiny_checkpoint, capsys):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "gray.png")  # replicated to 3 channels
    assert main(["infer", str(tmp_path / "a.png"), str(tmp_path / "gray.png"), "--checkpoint", str(tiny_checkpoint),
                 "--max-depth", "2", "--out", str(tmp_path / "out")]) == 0
    for stem, shape in (("a", (37, 50)), ("gray", (20, 20))):
        labels = Image.open(tmp_path / "out" / f"{stem}_labels.png")
        assert labels.mode == "P" and labels.size == shape[::-1]
        tree = qt.load(tmp_path / "out" / f"{stem}_tree.npz")
        assert tree.image_size == shape and tree.levels[3].num_nodes == 0  # max depth 2
        assert np.array_equal(qt.decode(tree)[0].numpy(), np.array(labels))
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == shape[::-1]
    import tifffile

    tifffile.imwrite(tmp_path / "two.tif", np.zeros((16, 16, 2), np.uint8))
    assert main(["infer", str(tmp_path / "two.tif"), "--checkpoint", str(tiny_checkpoint), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "in_channels" in capsys.readouterr().err
    assert main(["infer", str(tmp_path / "a.png"), "--checkpoint", str(tiny_checkpoint), "--budget", "0",
                 "--out", str(tmp_path / "o3")]) == 2


def test_bench_passes_its_arguments_to_the_benchmark_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_precision_flags_of_eval_infer_and_train(tmp_path, tiny_checkpoint, capsys):
    from PIL import Image

    from qgn.checkpoint import load_checkpoint
    from qgn.precision import tf32_enabled

    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--limit", "1", "--max-depth", "3", "--amp", "bf16",
                 "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())[0]["amp"] == "bf16"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["infer", str(tmp_path / "a.png"), "--checkpoint", str(tiny_checkpoint), "--amp", "bf16",
                 "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a_labels.png").is_file()
    assert main(["infer", str(tmp_path / "a.png"), "--checkpoint", str(tiny_checkpoint), "--amp", "fp16",
                 "--device", "cpu", "--out", str(tmp_path / "o2")]) == 2
    assert "use 'bf16' on CPU" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--limit", "1", "--max-depth", "0", "--tf32"]) == 0
    assert not tf32_enabled()  # --tf32 holds for the command only (tests run with TF32 off)
    assert main(["train", "--data", "synthetic:4,size=32", "--num-classes", "6", "--depth", "3", "--crop", "32",
                 "--epochs", "1", "--batch-size", "2", "--amp", "bf16", "--deterministic", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    train = load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]
    assert (train["amp"], train["deterministic"], train["tf32"]) == ("bf16", True, False)


def test_outputs_never_overwrite_each_other_or_a_file(tmp_path, capsys):
    for folder in ("a", "b"):
        qt.write_mask(tmp_path / folder / "m.png", np.zeros((8, 8), np.uint8))
    assert main(["encode", str(tmp_path / "a" / "m.png"), str(tmp_path / "b" / "m.png"), "--depth", "2",
                 "--out", str(tmp_path / "out")]) == 2
    assert "share the name 'm'" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    assert main(["encode", str(tmp_path / "a" / "m.png"), "--depth", "2", "--out", str(tmp_path / "file")]) == 2
    assert "is an existing file" in capsys.readouterr().err


def test_infer_reports_unreadable_images(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("broken.png", "empty.png"):
        assert main(["infer", str(tmp_path / name), "--checkpoint", str(tiny_checkpoint), "--out",
                     str(tmp_path / "out")]) == 2
        assert f"cannot read {tmp_path / name} as an image" in capsys.readouterr().err


def test_version_help_defaults_and_a_closed_pipe():
    done = subprocess.run([sys.executable, "-m", "qgn_cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("qgn 0.")
    text = subprocess.run([sys.executable, "-m", "qgn_cli", "train", "--help"], capture_output=True,
                          text=True).stdout
    assert "(default 10)" in text and "(default 0.002)" in text and "(default auto)" in text
    piped = subprocess.run(f"{sys.executable} -m qgn_cli stats {EXAMPLE} --depth 5 --json | head -1",
                           shell=True, capture_output=True, text=True)
    assert piped.stdout.strip() == "[" and "Traceback" not in piped.stderr and "Error" not in piped.stderr


def test_flags_override_the_config_file_and_depth_mismatches_are_explained(tmp_path, capsys):
    import yaml

    from qgn_cli import build_parser
    from qgn_cli.train import run_config_from_args

    (tmp_path / "f.yaml").write_text(yaml.safe_dump({"data": {"dataset": "synthetic:4,size=32"}}))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "f.yaml"), "--num-classes", "2",
                                      "--out", str(tmp_path / "r")])
    config = run_config_from_args(args)
    assert config.model.num_classes == 2
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"model": {"encoder_channels": [8, 12, 16, 24],
                                                                "decoder_channels": [8] * 6}}))
    assert main(["train", "--config", str(tmp_path / "g.yaml"), "--depth", "4", "--out", str(tmp_path / "r")]) == 2
    assert "remove encoder_channels and decoder_channels from the file" in capsys.readouterr().err


def test_ctrl_c_ends_training_with_one_line_naming_the_checkpoint_and_the_resume_command(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "qgn_cli", "train", "--data", "synthetic:64,size=64",
                                "--depth", "3", "--crop", "32", "--epochs", "50", "--no-progress", "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.jsonl").exists() and '"step"' in (run / "log.jsonl").read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: saved {run / 'last.pt'} at step ") and last.endswith(
        f"continue with: qgn train --out {run} --resume")
    assert "Traceback" not in err


def test_bench_writes_where_it_is_told_and_takes_no_ratio_from_no_memory_growth(tmp_path):
    import runpy

    from qgn_cli.bench import BENCH_SCRIPTS

    bench = runpy.run_path(str(BENCH_SCRIPTS["cost"]), run_name="qgn_bench")
    args = bench["parse_args"](["--out", str(tmp_path / "b")])
    assert args.json == str(tmp_path / "b" / "bench_qgn.json") and args.plot == str(tmp_path / "b" / "bench_qgn.png")
    assert bench["parse_args"]([]).markdown.startswith("runs/bench")  # never the committed benchmarks/results
    base = dict(height=128, width=256, mask="street", median_ms=10.0, median_cpu_ms=10.0)
    records = [dict(base, model="qgn", mode="inference", depth=5, peak_memory_mb=0.0),
               dict(base, model="dense", mode="inference", depth=None, peak_memory_mb=7.0)]
    table, rows = bench["verdicts"](records)
    assert rows[0]["inference_memory_ratio"] is None and "(met)" not in table.splitlines()[2].split("|")[3]


def test_sparserefine_trains_over_a_base_checkpoint_evaluates_and_infers(tmp_path, tiny_checkpoint, capsys):
    """`qgn train --model sparserefine --base-checkpoint`: the base's architecture and normalisation are taken, tau
    is chosen for the refined fraction, the sweep holds the base alone, and infer draws the refined pixels."""
    import torch
    from PIL import Image

    from qgn import load_predictor
    from qgn.checkpoint import load_checkpoint

    run = tmp_path / "sr"
    assert main(["train", "--model", "sparserefine", "--base-checkpoint", str(tiny_checkpoint), "--data",
                 "synthetic:4,size=32", "--refine-fraction", "0.1", "--base-scale", "0.5", "--epochs", "1",
                 "--batch-size", "2", "--out", str(run), "--no-progress"]) == 0
    state, base = load_checkpoint(run / "last.pt"), load_checkpoint(tiny_checkpoint)
    assert state["config"]["model"]["decoder_channels"] == base["config"]["model"]["decoder_channels"]
    assert state["config"]["data"]["normalize"] == base["config"]["data"]["normalize"]
    refine = state["config"]["model"]["refine"]
    assert refine["tau"] > 0 and refine["base_model"] == "qgn" and refine["refine_fraction"] == 0.1
    for name, value in base["model"].items():  # the base's weights, frozen
        assert torch.equal(state["model"][f"base.model.{name}"], value)
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--limit", "2", "--sweep", "--json",
                 str(tmp_path / "e.json")]) == 0
    records = json.loads((tmp_path / "e.json").read_text())
    assert records[0]["setting"] == "base alone" and records[0]["refined_fraction"] == 0
    assert {"model", "setting", "miou", "pixel_accuracy", "iou", "macs", "latency_ms", "peak_memory_mb", "tau",
            "refined_fraction"} <= set(records[1])
    assert all(r["macs"] > records[0]["macs"] for r in records[1:] if r["refined_fraction"] > 0)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["infer", str(tmp_path / "a.png"), "--checkpoint", str(run / "last.pt"), "--fraction", "0.2",
                 "--out", str(tmp_path / "out")]) == 0
    assert "20.0% of the pixels refined" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "a_overlay.png").size == (50, 37)
    assert load_predictor(run / "last.pt").predict(np.zeros((20, 30, 3), np.uint8), fraction=0.5).fine.sum() == 300
    assert main(["infer", str(tmp_path / "a.png"), "--checkpoint", str(run / "last.pt"), "--max-depth", "1",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "not a knob of a sparserefine model: max_depth" in capsys.readouterr().err
    assert main(["train", "--model", "sparserefine", "--data", "synthetic:4,size=32", "--out",
                 str(tmp_path / "nobase"), "--no-progress"]) == 2
    assert "--base-checkpoint" in capsys.readouterr().err
    assert main(["train", "--tau", "0.1", "--data", "synthetic:4,size=32", "--out", str(tmp_path / "r")]) == 2
    assert "--tau configure --model sparserefine" in capsys.readouterr().err
    assert main(["train", "--model", "sparserefine", "--base-checkpoint", str(run / "last.pt"), "--out",
                 str(tmp_path / "r2")]) == 2
    assert "a SparseRefine base is a checkpoint of" in capsys.readouterr().err


def test_segblocks_trains_evaluates_its_baselines_and_infers(tmp_path, capsys):
    """`qgn train --model segblocks` on crops that are not whole blocks (the collate pads them), `qgn eval --sweep`
    with the policy and its baselines, `qgn infer` with the high-resolution blocks drawn."""
    from PIL import Image

    from qgn.checkpoint import load_checkpoint

    run = tmp_path / "blocks"
    assert main(["train", "--model", "segblocks", "--block-size", "32", "--target", "0.3", "--policy-gamma", "1",
                 "--policy-weight", "1", "--policy-lr-scale", "0.5", "--data", "synthetic:4,size=64", "--depth", "3",
                 "--crop", "40", "--epochs", "1", "--batch-size", "2", "--out", str(run), "--no-progress"]) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["config"]["model"]["segblocks"] == {"block_size": 32, "target": 0.3, "policy_gamma": 1.0,
                                                     "policy_weight": 1.0, "policy_width": 64, "policy_lr_scale": 0.5}
    network, policy = state["optimizer"]["param_groups"]  # the policy's rate: half the network's at every step
    assert policy["lr"] == 0.5 * network["lr"] > 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("val" in r for r in log)
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--limit", "2", "--sweep", "--json",
                 str(tmp_path / "e.json")]) == 0
    records = {r["setting"]: r for r in json.loads((tmp_path / "e.json").read_text())}
    assert {"policy learned", "policy high", "policy low", "policy oracle, fraction 0.3"} <= set(records)
    assert records["policy high"]["high_res_fraction"] == 1 and records["policy low"]["high_res_fraction"] == 0
    assert records["policy low"]["macs"] < records["policy high"]["macs"]
    assert records["policy low"]["macs"] < records["policy learned"]["macs"]  # + the policy network's
    assert all(r["target"] == 0.3 for r in records.values())
    static = next(r for s, r in records.items() if s.startswith("policy static"))
    assert abs(static["macs"] / records["policy high"]["macs"] - (0.3 + 0.7 / 4)) < 0.1  # the target's cost
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["infer", str(tmp_path / "a.png"), "--checkpoint", str(run / "last.pt"), "--policy", "high",
                 "--out", str(tmp_path / "out")]) == 0
    assert "100% of the blocks at high resolution" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "a_overlay.png").size == (50, 37)
    assert main(["infer", str(tmp_path / "a.png"), "--checkpoint", str(run / "last.pt"), "--policy", "static",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "--scale" in capsys.readouterr().err
    assert main(["train", "--model", "segblocks", "--block-size", "24", "--depth", "3", "--data",
                 "synthetic:4,size=64", "--out", str(tmp_path / "bad")]) == 2
    assert "multiple of 2**(depth + 1)" in capsys.readouterr().err
