import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qgn import QGN, QGNConfig
from training.collate import QuadtreeCollate
from training.config import RunConfig, TrainConfig
from training.datasets import DataConfig, build_dataset
from training.loss import QuadtreeLoss
from qgn.checkpoint import load_checkpoint, load_model
from qgn.metrics import ConfusionMatrix
from training.trainer import Progress, TrainingInterrupted, train, train_one_epoch
from training.transforms import AugmentConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny_run(dataset="synthetic:8,size=64", epochs=2, **train_overrides) -> RunConfig:
    model = QGNConfig(num_classes=6, depth=3, encoder_channels=(8, 12), decoder_channels=(12, 10, 8, 6))
    data = DataConfig(dataset=dataset, augment=AugmentConfig(crop=(32, 32)))
    values = dict(epochs=epochs, batch_size=2, progress=False, log_every=1)
    values.update(train_overrides)
    return RunConfig(model=model, data=data, train=TrainConfig(**values))


def test_training_on_the_ground_truth_tree_overfits_a_handful_of_images():
    torch.manual_seed(0)
    dataset = build_dataset("synthetic:4,size=128", "train")
    images, masks, tree = QuadtreeCollate(5)([dataset[i] for i in range(4)])
    model = QGN(QGNConfig(num_classes=dataset.num_classes))
    criterion = QuadtreeLoss(dataset.num_classes, 5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        output = model(images, tree)
        loss = criterion(output.level_logits, tree)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    metric = ConfusionMatrix(dataset.num_classes)
    metric.update(model.predict(images).labels, masks)  # the predicted tree, not the ground truth
    assert metric.summary()["miou"] > 0.9


@pytest.mark.parametrize("model", ["qgn", "dense"])
def test_run_writes_its_files_and_logs(tmp_path, model):
    config = tiny_run()
    config.model.model = model
    summary = train(config, tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.pt", "config.yaml", "last.pt", "log.jsonl"]
    assert 0.0 <= summary["miou"] <= 1.0
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert any('"loss_l3"' in line and '"lr"' in line and '"images_per_s"' in line for line in lines)
    assert sum('"val"' in line for line in lines) == 2
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["progress"]["step"] == 8 and state["progress"]["epoch"] == 2
    assert RunConfig.load(tmp_path / "run" / "config.yaml") == config
    assert load_model(tmp_path / "run" / "best.pt").config.model == model
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, tmp_path / "run")


class Stop(Exception):
    pass


PRECISIONS = [
    pytest.param("cpu", "off", id="cpu-fp32"),
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "off", id="cuda-fp32", marks=pytest.mark.cuda),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=pytest.mark.cuda),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("device,amp", PRECISIONS)
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, Stop])
def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, interruption, device, amp):
    """Bitwise the same weights as an uninterrupted run, in every precision; on CUDA with deterministic algorithms.
    Checkpoints hold float32 weights whatever the precision, and CPU RNG states whatever the device."""
    config = tiny_run(epochs=3, checkpoint_every=2, device=device, amp=amp, deterministic=device == "cuda")
    train(config, tmp_path / "straight")

    def stop_at_step_5(progress: Progress):
        if progress.step == 5:
            raise interruption()

    with pytest.raises(interruption):
        train(config, tmp_path / "broken", on_step=stop_at_step_5)
    saved_step = load_checkpoint(tmp_path / "broken" / "last.pt")["progress"]["step"]
    assert saved_step == (5 if interruption is KeyboardInterrupt else 4)  # Ctrl-C saves; a crash keeps step 4
    train(config, tmp_path / "broken", resume=True)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "broken" / "last.pt")
    timing = ("seconds",)  # wall time differs between runs; everything else must not
    assert {k: v for k, v in resumed["progress"].items() if k not in timing} == \
        {k: v for k, v in straight["progress"].items() if k not in timing}
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
        assert not tensor.is_floating_point() or tensor.dtype == torch.float32, name
    assert resumed["rng"]["torch"].device.type == "cpu" and resumed["rng"]["torch"].dtype == torch.uint8
    assert ("cuda" in resumed["rng"]) == (device == "cuda")
    assert bool(resumed["scaler"]) == (amp == "fp16")


def test_ctrl_c_mid_step_finishes_the_step_and_resumes_bitwise(tmp_path, monkeypatch):
    """A real SIGINT during a forward pass (after BatchNorm updated its running statistics): the step finishes,
    last.pt holds it, and the resumed run equals an uninterrupted one in every weight and buffer."""
    config = tiny_run(epochs=3)
    train(config, tmp_path / "straight")
    calls, forward = [0], QuadtreeLoss.forward

    def interrupted_forward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:  # the loss of step 6: its forward pass has run
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(QuadtreeLoss, "forward", interrupted_forward)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, tmp_path / "broken")
    assert stopped.value.step == 6 and stopped.value.checkpoint == tmp_path / "broken" / "last.pt"
    monkeypatch.undo()
    train(config, tmp_path / "broken", resume=True)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "broken" / "last.pt")["model"]
    for name, tensor in straight.items():  # num_batches_tracked and running statistics included
        assert torch.equal(tensor, resumed[name]), name


def test_fp16_on_cpu_and_unknown_precisions_are_refused_before_any_step(tmp_path):
    with pytest.raises(ValueError, match="use 'bf16' on CPU"):
        train(tiny_run(device="cpu", amp="fp16"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="unknown amp 'fp8'"):
        tiny_run(amp="fp8")


def test_resume_with_another_model_config_is_rejected(tmp_path):
    train(tiny_run(epochs=1), tmp_path / "run")
    other = tiny_run(epochs=2)
    other.model.blocks_per_level = 2
    with pytest.raises(ValueError, match="another model config"):
        train(other, tmp_path / "run", resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_run(), tmp_path / "fresh", resume=True)


def test_non_finite_loss_stops_with_the_step_and_level():
    model = QGN(tiny_run().model)
    dataset = build_dataset("synthetic:2,size=32", "train")
    loader = [QuadtreeCollate(3)([dataset[0], dataset[1]])]

    class NanLoss(QuadtreeLoss):
        def forward(self, *args, **kwargs):
            losses = super().forward(*args, **kwargs)
            losses["loss_l2"] = losses["loss_l2"] * float("nan")
            losses["loss"] = losses["loss"] + losses["loss_l2"]
            return losses

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="step 0 .*loss_l2=nan"):
        train_one_epoch(model, NanLoss(6, 3), loader, optimizer, TrainConfig(), Progress(), 1, torch.device("cpu"),
                        lambda record: None)


def write_folder(root: Path, labels: list[np.ndarray], drop_mask_of: int | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i, label in enumerate(labels):
        Image.fromarray(np.full((*label.shape, 3), 100, np.uint8)).save(root / "images" / f"im{i}.png")
        if i != drop_mask_of:
            Image.fromarray(label.astype(np.uint8)).save(root / "masks" / f"im{i}.png")
    return root


@pytest.mark.parametrize("problem, message", [
    ("labels", "not in 0..5|num_classes|labels"),
    ("empty", "empty|no image"),
    ("no_mask", "without"),
    ("binary_0_255", "--label-map 255:1"),
])
def test_bad_data_fails_before_any_training_step(tmp_path, problem, message):
    labels = [np.zeros((32, 32), np.uint8) for _ in range(2)]
    if problem == "labels":
        labels[1][3, 3] = 9  # >= num_classes = 6
    if problem == "binary_0_255":
        for label in labels:
            label[8:20, 8:20] = 255  # foreground saved as 255, the ignore label
    folder = tmp_path / "data"
    if problem == "empty":
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir(parents=True)
    else:
        write_folder(folder, labels, drop_mask_of=1 if problem == "no_mask" else None)
    with pytest.raises(ValueError, match=message):
        train(tiny_run(dataset=f"folder:{folder}"), tmp_path / "run")
    assert not (tmp_path / "run" / "log.jsonl").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_crop_not_divisible_by_the_root_stride():
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 32 \\(depth 5\\)"):
        RunConfig(model=QGNConfig(depth=5), data=DataConfig(augment=AugmentConfig(crop=(100, 100))))


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs (nccl)")]),
])
def test_two_process_distributed_run(tmp_path, device):
    """torchrun with 2 processes (gloo on CPU, nccl on 2 GPUs): DDP keeps the replicas equal; rank 0 writes the
    files."""
    config = tiny_run(epochs=1, device="auto" if device == "cuda" else "cpu")
    config.loss.adaptive = True  # every rank must weight the levels alike (their losses are all-reduced)
    config.save(tmp_path / "config.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29517" if device == "cpu" else "29518",
         "-m", "qgn_cli", "train", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "ddp"),
         "--no-progress"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["progress"]["step"] == 2  # 8 images / (2 processes x batch 2)
    assert "done:" in result.stdout


def test_the_run_reports_last_best_and_test_and_logs_strict_json(tmp_path):
    config = tiny_run(epochs=2)
    result = train(config, tmp_path / "run")
    assert result["step"] == 8 and result["best_epoch"] in (0, 1) and 0 <= result["miou"] <= 1
    assert {"last", "best"} == set(result["test"]) and 0 <= result["test"]["best"]["miou"] <= 1  # synthetic test split

    def no_nan(value):
        raise ValueError(f"bare {value} in log.jsonl")

    records = [json.loads(line, parse_constant=no_nan) for line in (tmp_path / "run" / "log.jsonl").read_text()
               .splitlines()]
    assert any("test" in r for r in records)
    saved = RunConfig.load(tmp_path / "run" / "config.yaml").data.normalize
    assert saved.mode == "fixed" and len(saved.mean) == 3  # "auto" resolved from the training images, stored
    again = train(config, tmp_path / "run", resume=True)  # already finished: nothing to train, same figures
    assert again["step"] == 8 and again["miou"] == result["miou"]


def test_segblocks_policy_learns_at_its_own_scaled_rate_and_sparserefine_trains_only_its_refiner():
    from qgn import build_model
    from qgn.config import RefineConfig, SegBlocksConfig
    from training.trainer import build_optimizer

    architecture = dict(num_classes=3, depth=3, encoder_channels=(8, 8), decoder_channels=(8, 8, 8, 8))
    blocks = build_model(QGNConfig(model="segblocks", segblocks=SegBlocksConfig(block_size=16, policy_lr_scale=0.1),
                                   **architecture))
    optimizer = build_optimizer(blocks, TrainConfig(lr=0.01))
    network, policy = optimizer.param_groups
    assert {id(p) for p in policy["params"]} == {id(p) for p in blocks.policy.parameters()}
    assert network["lr_scale"] == 1.0 and policy["lr_scale"] == 0.1
    assert not {id(p) for p in network["params"]} & {id(p) for p in policy["params"]}
    refine = build_model(QGNConfig(model="sparserefine", refine=RefineConfig(widths=(4, 8)), **architecture))
    (group,) = build_optimizer(refine, TrainConfig()).param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in refine.parameters() if p.requires_grad}
    assert not {id(p) for p in group["params"]} & {id(p) for p in refine.base.parameters()}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_fused_optimizer_leaves_no_stale_inference_weights(optimizer):
    """build_optimizer fuses the step on CPU and CUDA; fused steps write the parameters without bumping their
    version counters, so a post-hook bumps them: a prediction after a step equals a fresh copy's, not the
    matrices derived (and kept) by a prediction before it."""
    import copy

    from training.trainer import build_optimizer

    torch.manual_seed(0)
    model = QGN(tiny_run().model)
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer, lr=0.1))
    assert opt.param_groups[0]["fused"]
    images = torch.randn(1, 3, 32, 32)
    model.eval()
    model.predict(images, threshold=0.0)  # derives and keeps the inference matrices
    model.train()
    loss = sum(p.square().sum() for p in model.parameters())
    loss.backward()
    opt.step()
    model.eval()
    after = model.predict(images, threshold=0.0)
    fresh = copy.deepcopy(model).predict(images, threshold=0.0)  # a copy keeps no derived matrices
    assert torch.equal(after.labels, fresh.labels)
    assert [level.num_nodes for level in after.tree.levels] == [level.num_nodes for level in fresh.tree.levels]
