"""Configuration: strict sections, typed values, overrides, errors that say where."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import ConfigError, apply_overrides, from_mapping, load_yaml, to_mapping
from edge_agent.ml.train import SECTIONS, TrainConfig, parse_config
from edge_agent.model.network import ModelConfig


def test_shipped_training_config_parses(tmp_path):
    sections = parse_config(load_yaml("configs/train_synthetic.yaml"), "configs/train_synthetic.yaml")
    assert sections["train"].steps > 0 and sections["diffusion"].num_inference_steps == 10
    # Round trip: what the sidecar stores parses back to the same objects.
    again = parse_config({k: to_mapping(v) for k, v in sections.items()}, "round trip")
    assert again == sections


def test_unknown_key_names_file_section_and_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"stepz": 10}}))
    with pytest.raises(ConfigError) as e:
        parse_config(load_yaml(path), str(path))
    msg = str(e.value)
    assert str(path) in msg and "train" in msg and "stepz" in msg and "steps" in msg


def test_unknown_section_and_bad_types_are_errors():
    with pytest.raises(ConfigError, match="unknown section"):
        parse_config({"trian": {}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"train\.steps.*integer"):
        from_mapping(TrainConfig, {"steps": "many"}, "train")
    with pytest.raises(ConfigError, match="not one of"):
        from_mapping(ModelConfig, {"encoder": "resnet"}, "model")
    with pytest.raises(ConfigError, match="true or false"):
        from_mapping(TrainConfig, {"amp": "yes"}, "train")


def test_overrides_parse_yaml_values():
    data = apply_overrides({"train": {"steps": 5}}, ["train.steps=7", "train.lr=1e-3", "model.encoder=light"])
    assert data == {"train": {"steps": 7, "lr": "1e-3"}, "model": {"encoder": "light"}}
    # YAML 1.1 leaves "1e-3" a string; the float field still takes it.
    assert parse_config(data, "cli")["train"].lr == 1e-3
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["train.steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text() | st.none(), max_size=4))
def test_arbitrary_sections_never_crash_the_loader(section):
    """Any mapping either parses or raises ConfigError — never another exception."""
    with contextlib.suppress(ConfigError):
        parse_config({"train": section}, "fuzz")
    assert set(SECTIONS) == {"data", "model", "diffusion", "train"}


def test_an_error_is_blamed_on_the_file_or_the_command_line_whichever_brought_it(tmp_path):
    from edge_agent.live.agent import load_agent_config

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("worker:\n  count: 2\n")
    bad.write_text("worker:\n  bogus: 1\n")
    with pytest.raises(ConfigError, match=r"^command line \(--set\):worker: unknown key\(s\) \['nope'\]"):
        load_agent_config(good, ["worker.nope=1"])
    with pytest.raises(ConfigError, match=r"^command line \(--set\):worker.count: must be >= 0"):
        load_agent_config(good, ["worker.count=-1"])
    with pytest.raises(ConfigError, match=rf"^{bad}:worker: unknown key\(s\) \['bogus'\]"):
        load_agent_config(bad, ["worker.count=1"])
    # An override may make a file valid that is not on its own (consent to plain tcp beyond loopback).
    exposed = tmp_path / "exposed.yaml"
    exposed.write_text("transport:\n  publish: tcp://0.0.0.0:5556\n")
    with pytest.raises(ConfigError, match=rf"^{exposed}"):
        load_agent_config(exposed)
    assert load_agent_config(exposed, ["transport.allow_insecure=true"]).transport.allow_insecure
    assert load_agent_config(good, ["worker.count=3"]).worker.count == 3
    assert good.read_text() == "worker:\n  count: 2\n"


def test_a_stream_id_with_a_dot_is_refused_at_load(tmp_path):
    # The dot ends a stream's topics (lvef.bed1.): inside an id it would make one topic another's prefix.
    from edge_agent.live.agent import load_agent_config

    with pytest.raises(ConfigError, match=r"streams\[0\].*'bed\.1'.*no dot"):
        load_agent_config(None, ["streams.0.id=bed.1"])
    assert load_agent_config(None, ["streams.0.id=bed_1-a"]).streams[0].id == "bed_1-a"
