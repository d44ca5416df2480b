"""Configuration: the TOML contract, its validation and the embedded default."""

from router.config.load import DEFAULT_CONFIG_TOML, load_config, load_default_config
from router.config.model import Config

__all__ = ["DEFAULT_CONFIG_TOML", "Config", "load_config", "load_default_config"]
