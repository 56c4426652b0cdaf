"""Typed configuration: OmegaConf structured dataclasses, YAML files and overrides.

``loading`` composes a part's config (schema → ``configs/<part>.yaml`` →
``configs/experiment/<name>.yaml`` → command-line ``key=value``) and rejects unknown keys;
``run`` holds the schema pieces every trainable part shares (trainer, logger, checkpoints).
"""

from emoedit.config.loading import ConfigError, compose_config, config_from_plain, config_to_plain, save_config_yaml
from emoedit.config.run import CheckpointConfig, LoggerConfig, RunConfig

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "LoggerConfig",
    "RunConfig",
    "compose_config",
    "config_from_plain",
    "config_to_plain",
    "save_config_yaml",
]
