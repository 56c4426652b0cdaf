"""The geometry editor (METHOD.md §3.6): a StarGAN-style conditional GAN on face-model coefficients.

The edited quantity is the *shape vector* ``s = concat(id_coeff, exp_coeff)`` of the face
model (sizes from its :class:`~emoedit.face_model.CoeffLayout`; see :class:`ShapeCoeffLayout`).

- :class:`GeometryGenerator` ``G(s, ê, s_ref)``: an MLP over ``[s, s_ref, s − s_ref, ê]``
  (the difference is optional; ``identity_features=False`` feeds the expression blocks
  only, so the edit cannot depend on who the person is) that predicts a **residual** ``Δs``; the output is
  ``s + Δs``. The last layer is zero-initialised by default, so an untrained generator is
  the identity (``G(s, ·, ·) = s``) and "no edit" is always easy to represent.
- :class:`GeometryDiscriminator` ``D(s, s_ref)``: an MLP trunk over ``[s, s_ref, s − s_ref]``
  with two heads, the WGAN critic ``D_c`` ``(B,)`` and the emotion regression ``D_e``
  ``(B, E_t)``. Normalisation is LayerNorm or none: a WGAN-GP critic must not use batch
  statistics (the gradient penalty is per sample), so BatchNorm is not offered.

Both networks have typed keyword arguments and return frozen dataclasses. The editor used
at inference is :func:`edit_geometry` (whole clips, pose / texture / lighting untouched);
a trained generator is loaded from a ``train.py geometry`` checkpoint with
:meth:`GeometryGenerator.from_checkpoint` (no Lightning needed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from emoedit.checkpoint_io import CheckpointError, load_checkpoint, require_part, state_dict_under
from emoedit.editing.emotion_code import NUM_EMOTIONS
from emoedit.face_model.layout import CoeffLayout, Coeffs
from emoedit.shape_checks import assert_finite, assert_shape

#: Part name of the checkpoints written by ``train.py geometry``.
GEOMETRY_PART = "geometry"
#: Prefix of the generator's tensors in such a checkpoint's ``state_dict``.
GENERATOR_STATE_PREFIX = "generator."
#: Prefix of the discriminator's tensors in such a checkpoint's ``state_dict``.
DISCRIMINATOR_STATE_PREFIX = "discriminator."
#: Checkpoint key holding :attr:`GeometryGenerator.init_kwargs` (a plain dict).
GENERATOR_KWARGS_KEY = "geometry_generator_kwargs"
#: Checkpoint key holding the face model's name and layout sizes the editor was trained with.
FACE_MODEL_KEY = "geometry_face_model"

#: Normalisations of the hidden layers ("layer" = LayerNorm over the features).
NORMS: tuple[str, ...] = ("layer", "none")
#: Activations by name.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


@dataclass(frozen=True)
class ShapeCoeffLayout:
    """Layout of the shape vector ``s = concat(id_coeff, exp_coeff)`` the editor works on."""

    id: int  # K_id, identity coefficients (first)
    exp: int  # K_exp, expression coefficients (after the identity block)

    def __post_init__(self) -> None:
        for name in ("id", "exp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ShapeCoeffLayout.{name} must be a non-negative int, got {value!r}")
        if self.id + self.exp == 0:
            raise ValueError("ShapeCoeffLayout: the shape vector is empty (id = exp = 0)")

    @classmethod
    def from_layout(cls, layout: CoeffLayout) -> ShapeCoeffLayout:
        """The id and exp sizes of a full coefficient layout."""
        return cls(id=layout.id, exp=layout.exp)

    @property
    def size(self) -> int:
        """S = K_id + K_exp."""
        return self.id + self.exp

    def split(self, shape_coeffs: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S)`` → ``(id_coeff (B, K_id), exp_coeff (B, K_exp))`` (views)."""
        assert_shape(shape_coeffs, (None, self.size), "shape_coeffs")
        return shape_coeffs[:, : self.id], shape_coeffs[:, self.id :]

    def join(self, id_coeff: Tensor, exp_coeff: Tensor) -> Tensor:
        """``(B, K_id)``, ``(B, K_exp)`` → ``(B, S)``."""
        dims = assert_shape(id_coeff, ("B", self.id), "id_coeff")
        assert_shape(exp_coeff, ("B", self.exp), "exp_coeff", dims)
        return torch.cat([id_coeff, exp_coeff], dim=1)

    def extract(self, layout: CoeffLayout, coeffs: Tensor) -> Tensor:
        """The shape vector ``(B, S)`` of full ``(B, layout.size)`` coefficients."""
        self.check(layout)
        parts = layout.split(coeffs)
        return self.join(parts.id_coeff, parts.exp_coeff)

    def replace(self, layout: CoeffLayout, coeffs: Tensor, shape_coeffs: Tensor) -> Tensor:
        """Full coefficients ``(B, layout.size)`` with id/exp taken from ``shape_coeffs`` ``(B, S)``;
        every other block (tex, angle, gamma, trans) copied unchanged. ``coeffs`` is not modified."""
        self.check(layout)
        parts = layout.split(coeffs)
        dims = assert_shape(coeffs, ("B", layout.size), "coeffs")
        assert_shape(shape_coeffs, ("B", self.size), "shape_coeffs", dims)
        id_coeff, exp_coeff = self.split(shape_coeffs.to(coeffs.dtype))
        return layout.join(Coeffs(id_coeff=id_coeff, exp_coeff=exp_coeff, tex_coeff=parts.tex_coeff,
                                  angle=parts.angle, gamma=parts.gamma, trans=parts.trans))

    def check(self, layout: CoeffLayout) -> None:
        """Raise ``ValueError`` unless ``layout`` has this id/exp split."""
        if layout.id != self.id or layout.exp != self.exp:
            raise ValueError(f"coefficient layout id/exp = {layout.id}/{layout.exp} does not fit the geometry "
                             f"editor's {self.id}/{self.exp} (another face model?)")


def _mlp(
    *,
    in_dim: int,  # input features
    hidden_dim: int,  # width of every hidden layer
    num_layers: int,  # hidden layers (Linear → norm → activation), >= 1
    norm: str,  # one of NORMS
    activation: str,  # key of ACTIVATIONS
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        layers.append(nn.Linear(width, hidden_dim))
        if norm == "layer":
            layers.append(nn.LayerNorm(hidden_dim))
        layers.append(ACTIVATIONS[activation]())
        width = hidden_dim
    return nn.Sequential(*layers)


def _feature_dim(layout: ShapeCoeffLayout, use_difference: bool, identity_features: bool) -> int:
    width = layout.size if identity_features else layout.exp
    return width * (3 if use_difference else 2)


def _features(layout: ShapeCoeffLayout, shape_coeffs: Tensor, reference: Tensor, use_difference: bool,
              identity_features: bool) -> Tensor:
    """``[s, s_ref, s − s_ref]`` (or without the difference; or of the expression blocks only), ``(B, F)``."""
    if not identity_features:
        shape_coeffs, reference = layout.split(shape_coeffs)[1], layout.split(reference)[1]
    parts = [shape_coeffs, reference]
    if use_difference:
        parts.append(shape_coeffs - reference)
    return torch.cat(parts, dim=1)


def _check_architecture(owner: str, *, hidden_dim: int, num_layers: int, norm: str, activation: str,
                        emotion_dim: int) -> None:
    problems = []
    if hidden_dim < 1:
        problems.append(f"hidden_dim must be >= 1, got {hidden_dim}")
    if num_layers < 1:
        problems.append(f"num_layers must be >= 1, got {num_layers}")
    if norm not in NORMS:
        problems.append(f"norm must be one of {NORMS} (no BatchNorm: WGAN-GP penalises per sample), got {norm!r}")
    if activation not in ACTIVATIONS:
        problems.append(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if emotion_dim < 1:
        problems.append(f"emotion_dim must be >= 1, got {emotion_dim}")
    if problems:
        raise ValueError(f"{owner}: " + "; ".join(problems))


@dataclass(frozen=True)
class GeometryGeneratorOutput:
    """One generator pass."""

    shape_coeffs: Tensor  # (B, S) edited s = concat(id_coeff, exp_coeff) = input + residual
    residual: Tensor  # (B, S) the predicted change Δs


@dataclass(frozen=True)
class GeometryDiscriminatorOutput:
    """One discriminator pass."""

    critic: Tensor  # (B,) WGAN critic score D_c (unbounded; higher = more real)
    emotion: Tensor  # (B, E_t) emotion regression D_e (eq. 2 codes: level / 3 per emotion)


class GeometryGenerator(nn.Module):
    """``G(s, ê, s_ref)``: shape vector + target emotion code + neutral reference → edited shape vector."""

    def __init__(
        self,
        *,
        id_dim: int,  # K_id, identity coefficients in s
        exp_dim: int,  # K_exp, expression coefficients in s
        emotion_dim: int = NUM_EMOTIONS,  # E_t, length of the emotion code
        hidden_dim: int = 256,  # width of the hidden layers
        num_layers: int = 4,  # hidden layers (Linear → norm → activation)
        norm: str = "layer",  # "layer" (LayerNorm) or "none"
        activation: str = "leaky_relu",  # key of ACTIVATIONS (leaky_relu has slope 0.2)
        use_difference: bool = True,  # also feed s − s_ref (the current expression relative to the person's neutral)
        identity_features: bool = True,  # feed the identity blocks of s and s_ref (False: expression blocks only)
        edit_identity: bool = True,  # False: the residual of the identity block is forced to 0 (only exp is edited)
        zero_init_output: bool = True,  # zero-initialise the output layer: the untrained G is the identity
    ) -> None:
        super().__init__()
        self.shape_layout = ShapeCoeffLayout(id=int(id_dim), exp=int(exp_dim))
        _check_architecture("GeometryGenerator", hidden_dim=hidden_dim, num_layers=num_layers, norm=norm,
                            activation=activation, emotion_dim=emotion_dim)
        self.emotion_dim = int(emotion_dim)
        self.use_difference = bool(use_difference)
        self.identity_features = bool(identity_features)
        self.edit_identity = bool(edit_identity)
        self.init_kwargs: dict[str, Any] = dict(
            id_dim=int(id_dim), exp_dim=int(exp_dim), emotion_dim=int(emotion_dim), hidden_dim=int(hidden_dim),
            num_layers=int(num_layers), norm=str(norm), activation=str(activation),
            use_difference=bool(use_difference), identity_features=bool(identity_features),
            edit_identity=bool(edit_identity), zero_init_output=bool(zero_init_output),
        )
        size = self.shape_layout.size
        in_dim = _feature_dim(self.shape_layout, use_difference, identity_features) + self.emotion_dim
        self.trunk = _mlp(in_dim=in_dim, hidden_dim=hidden_dim, num_layers=num_layers, norm=norm,
                          activation=activation)
        self.output = nn.Linear(hidden_dim, size)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)
        mask = torch.ones(size)
        if not edit_identity:
            mask[: self.shape_layout.id] = 0.0
        self.register_buffer("residual_mask", mask, persistent=False)

    @property
    def shape_size(self) -> int:
        """S = K_id + K_exp."""
        return self.shape_layout.size

    def forward(
        self,
        shape_coeffs: Tensor,  # (B, S) float input s = concat(id_coeff, exp_coeff)
        emotion_code: Tensor,  # (B, E_t) float target code ê (eq. 2: level / 3, >= 0; zeros = neutral)
        reference: Tensor,  # (B, S) float neutral shape vector s_ref of the same person
    ) -> GeometryGeneratorOutput:
        """Edited shape vectors ``(B, S)`` = ``s + Δs`` (see :class:`GeometryGeneratorOutput`)."""
        dims = assert_shape(shape_coeffs, ("B", self.shape_size), "shape_coeffs")
        assert_shape(emotion_code, ("B", self.emotion_dim), "emotion_code", dims)
        assert_shape(reference, ("B", self.shape_size), "reference", dims)
        features = _features(self.shape_layout, shape_coeffs, reference, self.use_difference, self.identity_features)
        features = torch.cat([features, emotion_code.to(shape_coeffs.dtype)], dim=1)
        residual = self.output(self.trunk(features))
        if not self.edit_identity:
            residual = residual * self.residual_mask.to(residual.dtype)
        return GeometryGeneratorOutput(shape_coeffs=shape_coeffs + residual, residual=residual)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,  # a geometry .ckpt written by train.py
        map_location: str | torch.device = "cpu",  # device of the loaded tensors
    ) -> GeometryGenerator:
        """The generator of a ``geometry`` checkpoint (``weights_only``), in eval mode."""
        path = Path(path)
        ckpt = load_checkpoint(path, map_location=map_location)
        require_part(ckpt, GEOMETRY_PART, path)
        kwargs = ckpt.get(GENERATOR_KWARGS_KEY)
        state = ckpt.get("state_dict")
        if not isinstance(kwargs, dict) or not isinstance(state, dict):
            raise CheckpointError(f"{path}: no '{GENERATOR_KWARGS_KEY}' or no state_dict (not written by train.py?)")
        try:
            generator = cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot build the geometry generator from {kwargs!r} ({err})") from None
        weights = state_dict_under(state, GENERATOR_STATE_PREFIX)
        expected = {name: tuple(t.shape) for name, t in generator.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in weights.items()}
        if expected != found:
            missing = sorted(set(expected) - set(found))[:5]
            extra = sorted(set(found) - set(expected))[:5]
            shapes = [k for k in expected if k in found and expected[k] != found[k]][:5]
            raise CheckpointError(f"{path}: generator tensors do not fit (missing {missing}, unexpected {extra}, "
                                  f"shape differs {shapes})")
        generator.load_state_dict(weights, strict=True)
        return generator.eval()


class GeometryDiscriminator(nn.Module):
    """``D(s, s_ref)`` → critic ``D_c`` and emotion regression ``D_e`` (shared trunk, two linear heads)."""

    def __init__(
        self,
        *,
        id_dim: int,  # K_id, identity coefficients in s
        exp_dim: int,  # K_exp, expression coefficients in s
        emotion_dim: int = NUM_EMOTIONS,  # E_t, outputs of the emotion head
        hidden_dim: int = 256,  # width of the hidden layers
        num_layers: int = 4,  # hidden layers (Linear → norm → activation)
        norm: str = "layer",  # "layer" (LayerNorm) or "none"; never batch statistics (WGAN-GP)
        activation: str = "leaky_relu",  # key of ACTIVATIONS
        use_difference: bool = True,  # also feed s − s_ref
        identity_features: bool = True,  # feed the identity blocks of s and s_ref (False: expression blocks only)
    ) -> None:
        super().__init__()
        self.shape_layout = ShapeCoeffLayout(id=int(id_dim), exp=int(exp_dim))
        _check_architecture("GeometryDiscriminator", hidden_dim=hidden_dim, num_layers=num_layers, norm=norm,
                            activation=activation, emotion_dim=emotion_dim)
        self.emotion_dim = int(emotion_dim)
        self.use_difference = bool(use_difference)
        self.identity_features = bool(identity_features)
        in_dim = _feature_dim(self.shape_layout, use_difference, identity_features)
        self.trunk = _mlp(in_dim=in_dim, hidden_dim=hidden_dim, num_layers=num_layers, norm=norm,
                          activation=activation)
        self.critic_head = nn.Linear(hidden_dim, 1)
        self.emotion_head = nn.Linear(hidden_dim, self.emotion_dim)

    @property
    def shape_size(self) -> int:
        """S = K_id + K_exp."""
        return self.shape_layout.size

    def forward(
        self,
        shape_coeffs: Tensor,  # (B, S) float shape vector to judge
        reference: Tensor,  # (B, S) float neutral shape vector of the same person (the condition)
    ) -> GeometryDiscriminatorOutput:
        """Critic ``(B,)`` and emotion regression ``(B, E_t)``."""
        dims = assert_shape(shape_coeffs, ("B", self.shape_size), "shape_coeffs")
        assert_shape(reference, ("B", self.shape_size), "reference", dims)
        hidden = self.trunk(_features(self.shape_layout, shape_coeffs, reference, self.use_difference,
                                      self.identity_features))
        return GeometryDiscriminatorOutput(critic=self.critic_head(hidden).squeeze(1),
                                           emotion=self.emotion_head(hidden))


@torch.no_grad()
def edit_geometry(
    generator: GeometryGenerator,  # trained G (its device is used; put it in eval mode)
    face_model: Any,  # the MorphableModel the coefficients belong to (its layout is checked)
    coeffs: Tensor,  # (T, L) float full coefficients of a clip's frames, L = face_model.layout.size
    emotion_codes: Tensor,  # (T, E_t) float target code per frame (eq. 2; zeros = keep neutral)
    reference: Tensor,  # (K, L) float coefficients of the person's neutral frames (K >= 1)
    *,
    batch_size: int = 4096,  # frames per generator call
) -> Tensor:
    """Edit the geometry of a clip: ``(T, L)`` coefficients with id/exp replaced by ``G``'s output.

    The condition ``s_ref`` is the **mean** shape vector of the ``K`` reference neutral
    frames (one condition for the whole clip, so the person's neutral face is estimated
    from many frames and the edit does not flicker with the reference). Training draws a
    single random neutral frame as ``s_ref`` (METHOD §3.6; ``data.reference_average``
    can average several); a mean of neutral frames of the same person lies in the same
    distribution up to the averaged-out speech. Texture, pose, lighting and translation
    blocks are copied bit for bit; the result has ``coeffs``' dtype and device, and the
    input is not modified.
    """
    layout = face_model.layout
    shape_layout = generator.shape_layout
    shape_layout.check(layout)
    dims = assert_shape(coeffs, ("T", layout.size), "coeffs")
    assert_shape(emotion_codes, ("T", generator.emotion_dim), "emotion_codes", dims)
    assert_shape(reference, (None, layout.size), "reference")
    if reference.shape[0] < 1:
        raise ValueError("edit_geometry: at least one reference neutral frame is needed")
    assert_finite(coeffs, "coeffs")
    assert_finite(emotion_codes, "emotion_codes")
    assert_finite(reference, "reference")
    if batch_size < 1:
        raise ValueError(f"edit_geometry: batch_size must be >= 1, got {batch_size}")
    device = next(generator.parameters()).device
    dtype = next(generator.parameters()).dtype
    s = shape_layout.extract(layout, coeffs).to(device=device, dtype=dtype)
    s_ref = shape_layout.extract(layout, reference).to(device=device, dtype=dtype).mean(dim=0, keepdim=True)
    codes = emotion_codes.to(device=device, dtype=dtype)
    edited = [
        generator(chunk, code_chunk, s_ref.expand(chunk.shape[0], -1)).shape_coeffs
        for chunk, code_chunk in zip(s.split(batch_size), codes.split(batch_size))
    ]
    shape = torch.cat(edited) if edited else s
    return shape_layout.replace(layout, coeffs, shape.to(device=coeffs.device, dtype=coeffs.dtype))
