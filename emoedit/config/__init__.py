"""Typed configuration: OmegaConf structured dataclasses, YAML files and overrides.

``loading`` composes a part's config (schema → ``configs/<part>.yaml`` →
``configs/experiment/<name>.yaml`` → command-line ``key=value``) and rejects unknown keys;
its building blocks (:func:`structured_config`, :func:`merge_config`, :func:`load_yaml_mapping`,
:func:`dotlist_to_dict`, ...) serve other loaders too (``emoedit evaluate``);
``run`` holds the schema pieces every trainable part shares (trainer, logger, checkpoints).
"""

from emoedit.config.loading import (
    ConfigError,
    compose_config,
    config_from_plain,
    config_keys,
    config_to_plain,
    did_you_mean,
    dotlist_to_dict,
    load_yaml_mapping,
    merge_config,
    save_config_yaml,
    split_override,
    structured_config,
)
from emoedit.config.run import CheckpointConfig, LoggerConfig, RunConfig

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "LoggerConfig",
    "RunConfig",
    "compose_config",
    "config_from_plain",
    "config_keys",
    "config_to_plain",
    "did_you_mean",
    "dotlist_to_dict",
    "load_yaml_mapping",
    "merge_config",
    "save_config_yaml",
    "split_override",
    "structured_config",
]
