"""Loading Deep3DFaceRecon_pytorch's official checkpoint layout into ReconRegressor.

The official epoch_20.pth cannot be shipped; a synthetic checkpoint with the same key names
and shapes (Deep3D's ReconNetWrapper: torchvision ResNet-50 trunk without fc as
``backbone``, seven 1×1-conv ``final_layers``) is built, saved and loaded through the mapper,
and the outputs are compared with the wrapper's own computation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from emoedit.face_model import CoeffLayout
from emoedit.reconstruction import Deep3DCheckpointError, load_deep3d_regressor, map_deep3d_state_dict
from emoedit.reconstruction.deep3d_checkpoint import DEEP3D_HEADS
from tests.recon_helpers import one_thread  # noqa: F401  (autouse fixture)


class OfficialWrapper(nn.Module):
    """Deep3D's ReconNetWrapper (use_last_fc=False), rebuilt from its published structure."""

    def __init__(self) -> None:
        super().__init__()
        backbone = resnet50(weights=None)
        del backbone.fc  # Deep3D's ResNet has no fc when use_last_fc=False
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, size, 1, bias=True) for _, size in DEEP3D_HEADS])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.avgpool(b.layer4(b.layer3(b.layer2(b.layer1(x)))))  # (B, 2048, 1, 1)
        return torch.flatten(torch.cat([layer(x) for layer in self.final_layers], dim=1), 1)


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[OfficialWrapper, Path]:
    torch.manual_seed(0)
    wrapper = OfficialWrapper()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in wrapper.final_layers:
            layer.weight.copy_(0.01 * torch.randn(layer.weight.shape, generator=g))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
        for module in wrapper.modules():  # non-trivial batch-norm statistics
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(1 + 0.2 * torch.rand(module.running_var.shape, generator=g))
    wrapper.eval()
    state = wrapper.state_dict()
    assert not any(k.startswith("backbone.fc") for k in state)
    assert state["final_layers.5.weight"].shape == (2, 2048, 1, 1) and state["final_layers.6.bias"].shape == (1,)
    optimizer = torch.optim.Adam(wrapper.final_layers.parameters())
    path = tmp_path_factory.mktemp("deep3d") / "epoch_20.pth"
    torch.save({"net_recon": state, "opt_00": optimizer.state_dict()}, path)
    return wrapper, path


def test_official_keys_map_and_outputs_match(official: tuple[OfficialWrapper, Path]) -> None:
    wrapper, path = official
    regressor = load_deep3d_regressor(path, layout=CoeffLayout.deep3d(), input_size=64)
    assert regressor.backbone_name == "resnet50" and not regressor.training
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = wrapper(images)
        got = regressor(images).coeffs
    assert got.shape == (2, 257)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Block order: id 80, exp 64, tex 80, angle 3, gamma 27, trans (xy from layer 5, z from layer 6).
    parts = regressor(images).parts
    torch.testing.assert_close(parts.trans[:, 2], expected[:, 256], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.gamma, expected[:, 227:254], rtol=1e-5, atol=1e-5)


def test_rejects_non_bfm09_face_models(official: tuple[OfficialWrapper, Path]) -> None:
    _, path = official
    with pytest.raises(Deep3DCheckpointError, match="only fits the BFM09 face model"):
        load_deep3d_regressor(path, layout=CoeffLayout(id=40, exp=23, tex=40))


def test_rejects_files_that_are_not_deep3d_checkpoints(tmp_path: Path) -> None:
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(Deep3DCheckpointError, match="not a Deep3DFaceRecon checkpoint"):
        load_deep3d_regressor(other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(Deep3DCheckpointError, match="not a readable checkpoint"):
        load_deep3d_regressor(garbage)
    with pytest.raises(FileNotFoundError):
        load_deep3d_regressor(tmp_path / "missing.pth")


def test_mapper_checks_head_shapes_and_unknown_keys() -> None:
    state = {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}
    for index, (_, size) in enumerate(DEEP3D_HEADS):
        state[f"final_layers.{index}.weight"] = torch.zeros(size, 512, 1, 1)
        state[f"final_layers.{index}.bias"] = torch.zeros(size)
    mapped = map_deep3d_state_dict(state)
    assert set(mapped) >= {"heads.id.weight", "heads.trans_xy.bias", "heads.trans_z.weight"}
    wrong = dict(state, **{"final_layers.0.weight": torch.zeros(40, 512, 1, 1)})
    with pytest.raises(Deep3DCheckpointError, match="only fits the BFM09 layout"):
        map_deep3d_state_dict(wrong)
    with pytest.raises(Deep3DCheckpointError, match="not Deep3D's ReconNetWrapper"):
        map_deep3d_state_dict(dict(state, extra=torch.zeros(1)))
    prefixed = {f"module.{k}": v for k, v in state.items()}
    assert set(map_deep3d_state_dict(prefixed)) == set(mapped)
