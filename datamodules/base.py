"""The base every part's DataModule derives from: built from the plain dict of its typed ``data`` config."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import pytorch_lightning as pl

from emoedit.config import config_from_plain

ConfigT = TypeVar("ConfigT")


class EmoeditDataModule(pl.LightningDataModule, Generic[ConfigT]):
    """Base class: validates its ``data`` config section against ``CONFIG_CLS``."""

    CONFIG_CLS: ClassVar[type]

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config: ConfigT = config_from_plain(self.CONFIG_CLS, config or {}, source=f"{type(self).__name__} data config")  # type: ignore[assignment]
