"""Wall-clock seconds per named stage of the video editor (decode, detect, ..., encode).

``with timer("recon"): ...`` adds the block's duration to ``timer.seconds["recon"]``. On
CUDA the device is synchronised before the clock is read, so asynchronous kernels are
charged to the stage that launched them (the numbers are then honest per stage, at the
cost of the overlap CUDA would otherwise give between stages).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Sequence

import torch

#: The stages of :class:`~emoedit.pipeline.editor.VideoEditor`, in pipeline order
#: (``EditReport.seconds`` has exactly these keys; the benchmark reads them by name).
EDIT_STAGES: tuple[str, ...] = (
    "decode", "detect", "align", "recon", "uv", "encoder", "classifier", "generator", "geometry", "render",
    "teeth", "paste", "encode",
)


class StageTimer:
    """Accumulates seconds per stage name (see the module docstring)."""

    def __init__(
        self,
        *,
        stages: Sequence[str] = EDIT_STAGES,  # the known stage names (every one is reported, 0.0 when unused)
        device: torch.device | str = "cpu",  # synchronised before reading the clock when it is a CUDA device
    ) -> None:
        self.seconds: dict[str, float] = {name: 0.0 for name in stages}
        self.device = torch.device(device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the ``with`` block as ``stage`` (a name of ``stages``)."""
        if stage not in self.seconds:
            raise KeyError(f"StageTimer: unknown stage {stage!r}; known: {list(self.seconds)}")
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] += time.perf_counter() - start

    def add(self, stage: str, seconds: float) -> None:
        """Charge ``seconds`` measured elsewhere to ``stage``."""
        if stage not in self.seconds:
            raise KeyError(f"StageTimer: unknown stage {stage!r}; known: {list(self.seconds)}")
        self.seconds[stage] += float(seconds)


__all__ = ["EDIT_STAGES", "StageTimer"]
