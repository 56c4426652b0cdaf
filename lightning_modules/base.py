"""The base every trainable part's LightningModule ("system") derives from.

A system is built from the plain dict of its typed ``model`` config (so hyperparameters
saved in checkpoints are plain data and reload with ``weights_only=True``); it validates
that dict against its schema, saves it as ``hyper_parameters = {"part", "config"}`` and
builds its networks from the typed config.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import pytorch_lightning as pl

from emoedit.config import config_from_plain, config_to_plain

ConfigT = TypeVar("ConfigT")


class EmoeditSystem(pl.LightningModule, Generic[ConfigT]):
    """Base class: typed config in, plain-dict hyperparameters out."""

    PART: ClassVar[str]  # part name as in train.py's table
    CONFIG_CLS: ClassVar[type]  # the ``model`` section's dataclass
    #: set by train.py when this run's weights come from ``init_from`` (not a resume): the
    #: run begins at step 0, or at the checkpoint's step with ``init_keep_counters``
    started_from_init: bool = False

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        typed = config_from_plain(self.CONFIG_CLS, config or {}, source=f"{self.PART} model config")
        self.config: ConfigT = typed  # type: ignore[assignment]
        self.save_hyperparameters({"part": self.PART, "config": config_to_plain(typed)})
