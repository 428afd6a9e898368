"""The typed configuration: defaults < file < --set overrides, with errors that name the key."""

from __future__ import annotations

import pytest

from components.beam_runtime import EMBEDDED_SAMPLING_PERIOD_MS, beam_options, beam_pipeline, runs_on_one_worker
from components.config import ConfigError, load_config


def test_file_then_overrides(tmp_path):
    path = tmp_path / "cvpipe.yaml"
    path.write_text("ingest:\n  min_side: 64\n  splits: {train: 0.7, valid: 0.2, test: 0.1}\nbeam:\n  runner: DirectRunner\n")
    config = load_config(str(path), ["ingest.min_side=100", "ingest.labels=cat,dog", "beam.options=[--foo=1]"])
    assert config.ingest.min_side == 100
    assert config.ingest.splits.train == 0.7 and config.ingest.splits.valid == 0.2
    assert config.ingest.labels == ["cat", "dog"]
    assert config.beam.options == ["--foo=1"]
    assert config.ingest.max_pixels == 40_000_000  # default kept


def test_json_file(tmp_path):
    path = tmp_path / "cvpipe.json"
    path.write_text('{"ingest": {"target_shard_bytes": 1000}}')
    assert load_config(str(path)).ingest.target_shard_bytes == 1000


@pytest.mark.parametrize(
    "override, message",
    [
        ("ingest.min_sid=3", r"unknown key\(s\) \['ingest.min_sid'\]"),
        ("ingest.min_side=big", "ingest.min_side must be int"),
        ("ingest.splits.train=0.9", "sum to 1"),
        ("ingest.formats=[jpeg,heic]", "unsupported"),
        ("nosection", "expected section.key=value"),
        ("beam.direct_running_mode=fast", "direct_running_mode"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def direct_options(config_overrides: list[str], flags: list[str], stage_mode: str) -> tuple[str, int]:
    options = beam_options(load_config(overrides=config_overrides), None, flags, stage_mode).get_all_options()
    return options["direct_running_mode"], options["direct_num_workers"]


def test_direct_runner_mode_is_the_stages_unless_the_config_or_a_flag_says_otherwise():
    assert direct_options([], [], "in_memory") == ("in_memory", 1)
    assert direct_options([], [], "multi_processing") == ("multi_processing", 2)
    assert direct_options(["beam.direct_running_mode=multi_threading"], [], "in_memory") == ("multi_threading", 2)
    assert direct_options([], ["--direct_running_mode", "in_memory"], "multi_processing") == ("in_memory", 1)
    assert direct_options(["beam.direct_num_workers=3"], ["--direct_running_mode=multi_processing"],
                          "in_memory") == ("multi_processing", 3)
    assert direct_options([], ["--direct_num_workers", "3"], "in_memory") == ("multi_processing", 3)
    assert direct_options([], ["--direct_num_workers=0", "--direct_running_mode=multi_processing"],
                          "in_memory") == ("multi_processing", 0)  # Beam's "one per CPU"
    assert direct_options([], ["--direct_num=3"], "in_memory") == ("in_memory", 1)  # Beam takes no abbreviations


@pytest.mark.parametrize("flag", ["--direct_num_workers=x", "--direct_running_mode=fast"])
def test_a_bad_direct_runner_flag_is_a_config_error(flag):
    with pytest.raises(ConfigError, match=flag.split("=")[0]):
        beam_options(load_config(), None, [flag])


def test_the_direct_runner_runs_on_the_fn_api_runner_without_trying_prism():
    # Beam's DirectRunner first tries Prism, downloading its binary from GitHub at run time.
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    assert isinstance(beam_pipeline(beam_options(load_config(), None, [])).runner, FnApiRunner)
    assert type(beam_pipeline(beam_options(load_config(), "SparkRunner", [])).runner).__name__ == "SparkRunner"


@pytest.mark.parametrize(("runner", "flags", "stage_mode", "one"), [
    (None, [], "in_memory", True),
    (None, [], "multi_processing", False),
    (None, ["--direct_num_workers=1"], "multi_processing", True),
    (None, ["--direct_running_mode=multi_threading"], "in_memory", False),
    ("DataflowRunner", [], "in_memory", False),
])
def test_a_single_direct_runner_worker_is_recognised(runner, flags, stage_mode, one):
    assert runs_on_one_worker(beam_options(load_config(), runner, flags, stage_mode)) is one


def test_in_process_bundles_sample_their_state_often_enough_not_to_wait_on_the_sampler():
    # Beam's bundles end by joining a sampler thread that sleeps up to 200 ms between samples.
    from apache_beam.runners.worker.statesampler import StateSampler
    from apache_beam.utils.counters import CounterFactory

    beam_pipeline(beam_options(load_config(), None, []))
    assert StateSampler("stage", CounterFactory()).sampling_period_ms == EMBEDDED_SAMPLING_PERIOD_MS < 200


def test_the_defaults_change_no_image_meaning_and_the_demo_recipe_is_its_own_file():
    """Flips, quarter turns and inversion can turn one class into another (a 6 into a 9): off by default;
    configs/demo.yaml (what `make run` passes) switches them on for the demo's shapes, and nothing else."""
    from pathlib import Path

    defaults = load_config().train.augment
    assert (defaults.flip, defaults.quarter_turns, defaults.invert, defaults.color) == (False, False, False, True)
    demo_file = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    demo = load_config(str(demo_file))
    assert (demo.train.augment.flip, demo.train.augment.quarter_turns, demo.train.augment.invert,
            demo.train.augment.color) == (True, True, True, False)
    changed = {section for section, values in demo.to_dict().items() if values != load_config().to_dict()[section]}
    assert changed == {"train"}
    assert "--config $(DEMO_CONFIG)" in (demo_file.parents[1] / "Makefile").read_text()


def test_a_float_written_without_a_dot_is_a_float():
    """YAML 1.1 reads 1e-3 as a string: a float setting takes it as the number it means."""
    assert load_config(overrides=["train.learning_rate=1e-3"]).train.learning_rate == 0.001
    with pytest.raises(ConfigError, match="train.learning_rate must be float"):
        load_config(overrides=["train.learning_rate=fast"])
