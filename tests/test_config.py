import pytest
import yaml

from qgn.config import QGNConfig, config_from_dict
from qgn.normalize import NormalizeConfig
from training.config import RunConfig, TrainConfig, move_data_fields
from training.datasets import DataConfig
from training.transforms import AugmentConfig


def test_a_run_config_round_trips_through_its_yaml_file(tmp_path):
    config = RunConfig(model=QGNConfig.for_depth(3, num_classes=4, in_channels=1),
                       data=DataConfig(dataset="synthetic:4", augment=AugmentConfig(crop=(32, 64)),
                                       normalize=NormalizeConfig(mode="fixed", mean=(0.5,), std=(0.2,))),
                       train=TrainConfig(epochs=3))
    config.save(tmp_path / "c.yaml")
    assert RunConfig.load(tmp_path / "c.yaml") == config
    assert config.data.augment.crop == (32, 64) and config.data.normalize.mean == (0.5,)  # tuples again


def test_the_model_section_is_the_one_home_of_classes_depth_channels_and_ignore_label():
    data = yaml.safe_load(yaml.safe_dump(RunConfig().as_dict()))["data"]
    assert not {"num_classes", "depth", "in_channels", "ignore_index"} & set(data)
    with pytest.raises(ValueError, match=r"crop height 48 is not a positive multiple of 2\*\*depth = 32 \(depth 5\); "
                                         r"nearest valid height: 32 or 64"):
        RunConfig(data=DataConfig(augment=AugmentConfig(crop=(48, 64))))
    assert RunConfig(model=QGNConfig.for_depth(4), data=DataConfig(augment=AugmentConfig(crop=48))).data.augment.crop \
        == (48, 48)


def test_files_with_the_model_facts_also_in_the_data_section_load():
    before = {"model": {"depth": 3, "encoder_channels": [8, 12], "decoder_channels": [8, 8, 8, 8], "num_classes": 6},
              "data": {"dataset": "synthetic", "num_classes": 6, "depth": 3, "in_channels": 1, "ignore_index": 254}}
    config = RunConfig.from_dict(before)
    assert (config.model.num_classes, config.model.depth, config.model.in_channels, config.model.ignore_index) == \
        (6, 3, 1, 254)  # a data-only value moves to the model section
    assert before["data"]["depth"] == 3  # the caller's dict is left alone
    assert move_data_fields({"data": {"num_classes": None}}) == {"data": {}, "model": {}}
    assert move_data_fields({"data": {"dataset": "synthetic"}}) == {"data": {"dataset": "synthetic"}}
    with pytest.raises(ValueError, match=r"data.num_classes = 5 contradicts model.num_classes = 6: num_classes is a "
                                         r"field of the model section only \(model.num_classes\); remove data.num"):
        RunConfig.from_dict({**before, "data": {"num_classes": 5}})


def test_unknown_fields_and_sections_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown data fields \['depht'\]; valid fields: \['augment', 'dataset'"):
        RunConfig.from_dict({"data": {"depht": 3}})
    with pytest.raises(ValueError, match=r"unknown data.normalize fields \['means'\]"):
        RunConfig.from_dict({"data": {"normalize": {"means": [0.5]}}})
    with pytest.raises(ValueError, match="unknown config sections \\['optim'\\]"):
        RunConfig.from_dict({"optim": {}})
    with pytest.raises(ValueError, match="train must be a mapping"):
        RunConfig.from_dict({"train": [1]})
    with pytest.raises(ValueError, match="data must be a mapping"):
        RunConfig.from_dict({"data": ["synthetic"]})
    assert RunConfig.from_dict({"model": None, "data": None}) == RunConfig()  # empty sections in a YAML file


def test_configs_from_plain_data_turn_lists_into_tuples():
    assert config_from_dict(AugmentConfig, {"crop": [32, 64], "scale_range": [1, 1]}, "a") == \
        AugmentConfig(crop=(32, 64), scale_range=(1, 1))
    normalize = NormalizeConfig.from_dict({"mode": "fixed", "mean": [0.1, 0.2, 0.3], "percentiles": [2, 98]})
    assert normalize.mean == (0.1, 0.2, 0.3) and normalize.percentiles == (2, 98)
