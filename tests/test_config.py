"""Configuration: defaults, environment, command line, validation."""

import pytest

from service.config import DEFAULT_RULES_PATH, ServiceConfig, VadConfig, WindowConfig, load_config
from service.errors import ConfigError


def test_environment_overrides_defaults_and_cli_overrides_environment():
    """CALLPULSE_* variables replace defaults; command-line values replace the variables."""
    env = {"CALLPULSE_GRPC_PORT": "6000", "CALLPULSE_MODEL": "/models/x", "CALLPULSE_REDIS_URL": "redis://r:1/2",
           "CALLPULSE_HOP_MS": "750"}
    config = load_config({"grpc_port": 7000, "device": None}, environ=env)
    assert config.server.grpc_port == 7000
    assert config.inference.model == "/models/x"
    assert config.redis.url == "redis://r:1/2"
    assert config.windows.hop_ms == 750
    assert config.inference.device == "cpu"
    assert config.rules_path == DEFAULT_RULES_PATH


def test_unparseable_environment_value_names_the_variable():
    """A variable that does not parse is reported by name and value."""
    with pytest.raises(ConfigError, match="CALLPULSE_GRPC_PORT='abc'"):
        load_config({}, environ={"CALLPULSE_GRPC_PORT": "abc"})


@pytest.mark.parametrize(
    "cli,message",
    [
        ({"device": "tpu"}, "device must be cpu or cuda"),
        ({"hub": "github"}, "hub must be ms or hf"),
        ({"grpc_port": 70000}, "grpc_port"),
        ({"redis_url": "http://x"}, "redis url"),
        ({"redis_prefix": "a:b"}, "prefix"),
    ],
)
def test_invalid_values_are_rejected_with_the_field(cli, message):
    """Each invalid setting raises ConfigError that names the setting."""
    with pytest.raises(ConfigError, match=message):
        load_config(cli, environ={})


def test_nested_sections_validate_on_construction():
    """VAD and window settings are checked when the dataclass is built."""
    with pytest.raises(ConfigError, match="aggressiveness"):
        VadConfig(aggressiveness=5)
    with pytest.raises(ConfigError, match="hop_ms"):
        WindowConfig(window_ms=1000, hop_ms=2000)


def test_config_is_frozen():
    """Configuration objects cannot be mutated after construction."""
    config = ServiceConfig()
    with pytest.raises(AttributeError):
        config.server.grpc_port = 1  # type: ignore[misc]


def test_auto_batch_size_depends_on_the_device():
    """max_batch 0 means 4 windows per model call on the CPU and 32 on CUDA; an explicit value wins."""
    from service.config import InferenceConfig

    assert InferenceConfig().effective_max_batch == 4
    assert InferenceConfig(device="cuda").effective_max_batch == 32
    assert InferenceConfig(max_batch=12).effective_max_batch == 12


def test_precision_defaults_to_auto_and_half_precision_needs_cuda():
    """precision defaults to auto (bf16 on CUDA, fp32 on the CPU); fp16/bf16 need a CUDA device; others are refused."""
    from service.config import InferenceConfig

    assert InferenceConfig().precision == "auto"
    assert load_config({}, environ={"CALLPULSE_PRECISION": "fp16", "CALLPULSE_DEVICE": "cuda"}).inference.precision == "fp16"
    assert load_config({"precision": "auto"}, environ={}).inference.precision == "auto"
    with pytest.raises(ConfigError, match="precision bf16 needs a CUDA device"):
        load_config({"precision": "bf16"}, environ={})
    with pytest.raises(ConfigError, match="precision must be auto, fp32, fp16, bf16, got 'fp64'"):
        load_config({"precision": "fp64", "device": "cuda"}, environ={})


def test_cuda_graphs_setting_comes_from_the_environment():
    """CUDA graphs are on by default; CALLPULSE_CUDA_GRAPHS turns them off; a value that is not a boolean is refused."""
    from service.config import InferenceConfig

    assert load_config({}, environ={}).inference.cuda_graphs is True
    assert load_config({}, environ={"CALLPULSE_CUDA_GRAPHS": "0"}).inference.cuda_graphs is False
    assert load_config({}, environ={"CALLPULSE_CUDA_GRAPHS": "off"}).inference.cuda_graphs is False
    assert load_config({}, environ={"CALLPULSE_CUDA_GRAPHS": "Yes"}).inference.cuda_graphs is True
    with pytest.raises(ConfigError, match="CALLPULSE_CUDA_GRAPHS='maybe'"):
        load_config({}, environ={"CALLPULSE_CUDA_GRAPHS": "maybe"})
    with pytest.raises(ConfigError, match="cuda_graphs must be true or false"):
        InferenceConfig(cuda_graphs="no")  # type: ignore[arg-type]


def test_spill_after_ms_comes_from_the_environment_and_is_validated():
    """CALLPULSE_SPILL_AFTER_MS sets how long an unacknowledged event stays in memory (default 200 ms); 0 is refused."""
    assert load_config({}, environ={}).redis.spill_after_ms == 200
    assert load_config({}, environ={"CALLPULSE_SPILL_AFTER_MS": "50"}).redis.spill_after_ms == 50
    with pytest.raises(ConfigError, match="spill_after_ms must be 10..60000, got 0"):
        load_config({}, environ={"CALLPULSE_SPILL_AFTER_MS": "0"})


def test_turn_taking_thresholds_come_from_the_environment_and_are_validated():
    """CALLPULSE_INTERRUPTION_CONTEST_MS and CALLPULSE_MIN_SPEECH_MS set the back-channel and blip thresholds (defaults
    1500 and 300 ms); a contest shorter than the minimum overlap is refused naming both."""
    analytics = load_config({}, environ={}).analytics
    assert (analytics.interruption_contest_ms, analytics.min_speech_ms) == (1500, 300)
    analytics = load_config({}, environ={"CALLPULSE_INTERRUPTION_CONTEST_MS": "2000", "CALLPULSE_MIN_SPEECH_MS": "0"}).analytics
    assert (analytics.interruption_contest_ms, analytics.min_speech_ms) == (2000, 0)
    with pytest.raises(ConfigError, match=r"interruption_contest_ms must be interruption_min_overlap_ms \(500\)..60000, got 400"):
        load_config({}, environ={"CALLPULSE_INTERRUPTION_CONTEST_MS": "400"})
    with pytest.raises(ConfigError, match="min_speech_ms must be 0..2000, got 5000"):
        load_config({}, environ={"CALLPULSE_MIN_SPEECH_MS": "5000"})


def test_steady_gate_and_hold_settings_come_from_the_environment_and_are_validated():
    """CALLPULSE_STEADY_GATE turns the tone and music gate off and CALLPULSE_HOLD_MIN_MS sets when steady sound is a hold
    (defaults on and 5000 ms); a hold shorter than a second is refused."""
    analytics = load_config({}, environ={}).analytics
    assert (analytics.steady_gate, analytics.hold_min_ms) == (True, 5000)
    analytics = load_config({}, environ={"CALLPULSE_STEADY_GATE": "false", "CALLPULSE_HOLD_MIN_MS": "90000"}).analytics
    assert (analytics.steady_gate, analytics.hold_min_ms) == (False, 90000)
    with pytest.raises(ConfigError, match="hold_min_ms must be 1000..600000, got 10"):
        load_config({}, environ={"CALLPULSE_HOLD_MIN_MS": "10"})


def test_laughter_and_work_block_settings_come_from_the_environment_and_are_validated():
    """CALLPULSE_LAUGHTER turns the laughter check off and CALLPULSE_WORK_BLOCK_MS sets how much of a live call's audio
    queues before it is worked through (defaults on and 100 ms); a block over a second is refused."""
    config = load_config({}, environ={})
    assert (config.analytics.laughter, config.ingest.work_block_ms) == (True, 100)
    config = load_config({}, environ={"CALLPULSE_LAUGHTER": "false", "CALLPULSE_WORK_BLOCK_MS": "0"})
    assert (config.analytics.laughter, config.ingest.work_block_ms) == (False, 0)
    with pytest.raises(ConfigError, match="work_block_ms must be 0..1000, got 2000"):
        load_config({}, environ={"CALLPULSE_WORK_BLOCK_MS": "2000"})
