"""Adversarial losses: StyleGAN2's (t-GAN, teeth t-GAN) and WGAN-GP's (geometry editor, METHOD.md §3.6).

StyleGAN2 (non-saturating logistic loss with lazy regularisation):

- generator: ``softplus(−D(G(z)))`` (:func:`generator_logistic_loss`);
- discriminator: ``softplus(D(G(z))) + softplus(−D(x))`` (:func:`discriminator_logistic_loss`);
- R1: ``γ/2 · ‖∇_x D(x)‖²`` on reals (:func:`r1_penalty` gives the squared norm per sample);
- path length: ``(‖J_wᵀ y‖₂ − a)²`` with ``y ~ N(0, I)/√(HW)`` and ``a`` the running mean of
  the lengths (decay 0.01) — :class:`PathLengthPenalty` keeps ``a`` as a buffer (checkpointed).

WGAN-GP: critic ``D(fake) − D(real)``, generator ``−D(fake)``, gradient penalty
``(‖∇_x̃ D(x̃)‖₂ − 1)²`` at ``x̃ = a·real + (1 − a)·fake``, ``a ~ U(0, 1)`` per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.shape_checks import assert_shape


def generator_logistic_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss ``mean(softplus(−D(G(z))))`` = ``−log σ(D(G(z)))``; logits ``(B, 1)`` or ``(B,)``."""
    return F.softplus(-fake_logits.float()).mean()


@dataclass(frozen=True)
class LogisticDLoss:
    """The two terms of the logistic discriminator loss (scalars; ``total`` = their sum)."""

    real: Tensor  # mean softplus(−D(x)) = −log σ(D(x))
    fake: Tensor  # mean softplus(D(G(z))) = −log(1 − σ(D(G(z))))

    @property
    def total(self) -> Tensor:
        return self.real + self.fake


def discriminator_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> LogisticDLoss:
    """Logistic discriminator loss on real and generated logits (each ``(B, 1)`` or ``(B,)``)."""
    return LogisticDLoss(real=F.softplus(-real_logits.float()).mean(), fake=F.softplus(fake_logits.float()).mean())


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """Squared gradient norm ``‖∇_x Σ D(x)‖²`` per sample, ``(B,)``, differentiable (``create_graph``).

    ``real_images`` must require grad and ``real_logits`` must be computed from it. The
    R1 loss is ``γ/2 · mean(penalty)`` (times the lazy-regularisation interval).
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty: real_images must require grad (call .requires_grad_() before D)")
    (grads,) = torch.autograd.grad(outputs=[real_logits.float().sum()], inputs=[real_images], create_graph=True)
    return grads.float().square().flatten(1).sum(dim=1)


@dataclass(frozen=True)
class PathLengthOutput:
    """One path-length regularisation evaluation."""

    penalty: Tensor  # (B,) (length − running mean)², differentiable
    lengths: Tensor  # (B,) ‖J_wᵀ y‖₂ (averaged over the W+ rows), differentiable
    mean: Tensor  # () the updated running mean (detached)


class PathLengthPenalty(nn.Module):
    """StyleGAN2 path-length regulariser with its running mean ``pl_mean`` (a checkpointed buffer).

    ``lengths_b = sqrt(mean_rows Σ_k (∂(Σ img·y)/∂ws)²)`` with ``y = N(0, 1)/sqrt(H·W)``;
    ``pl_mean ← lerp(pl_mean, mean_b lengths, decay)``; ``penalty_b = (lengths_b − pl_mean)²``.
    The loss is ``weight · mean(penalty)`` (times the lazy-regularisation interval).
    """

    def __init__(self, *, decay: float = 0.01) -> None:  # decay: step of the running-mean update
        super().__init__()
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"PathLengthPenalty: decay must lie in (0, 1], got {decay}")
        self.decay = decay
        self.register_buffer("pl_mean", torch.zeros([]))

    def forward(
        self,
        images: Tensor,  # (B, C, H, W) generated images, computed from ws
        ws: Tensor,  # (B, num_ws, w_dim) the W+ latents the images were generated from (in the graph)
        noise: Tensor | None = None,  # (B, C, H, W) projection noise; None: N(0, 1)/sqrt(H·W)
    ) -> PathLengthOutput:
        """Evaluate the penalty and update ``pl_mean`` (see the class docstring)."""
        dims = assert_shape(images, ("B", None, "H", "W"), "PathLengthPenalty images")
        assert_shape(ws, ("B", None, None), "PathLengthPenalty ws", dims)
        if noise is None:
            noise = torch.randn_like(images) / (images.shape[2] * images.shape[3]) ** 0.5
        (grads,) = torch.autograd.grad(outputs=[(images.float() * noise).sum()], inputs=[ws], create_graph=True)
        lengths = grads.float().square().sum(dim=2).mean(dim=1).sqrt()
        mean = self.pl_mean.lerp(lengths.detach().mean(), self.decay)
        with torch.no_grad():
            self.pl_mean.copy_(mean)
        return PathLengthOutput(penalty=(lengths - mean).square(), lengths=lengths, mean=mean.detach())

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


# --------------------------------------------------------------------------- WGAN-GP


def wgan_generator_loss(fake_scores: Tensor) -> Tensor:
    """``−mean D(fake)``."""
    return -fake_scores.float().mean()


def wgan_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """``mean D(fake) − mean D(real)`` (the critic minimises it)."""
    return fake_scores.float().mean() - real_scores.float().mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],  # x̃ (B, ...) → scores (B,) or (B, 1); close over conditions
    real: Tensor,  # (B, ...) real samples
    fake: Tensor,  # (B, ...) generated samples (detached or not; the penalty does not train the generator)
    *,
    target_norm: float = 1.0,  # the gradient norm the penalty pulls toward
    generator: torch.Generator | None = None,  # random source of the interpolation weights
) -> Tensor:
    """WGAN-GP penalty ``mean_b (‖∇_x̃ D(x̃)‖₂ − target)²``, ``x̃ = a·real + (1−a)·fake``, ``a ~ U(0,1)`` per sample."""
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    device = generator.device if generator is not None else real.device
    alpha = torch.rand(shape, generator=generator, dtype=real.dtype, device=device).to(real.device)
    mixed = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(mixed)
    (grads,) = torch.autograd.grad(outputs=[scores.float().sum()], inputs=[mixed], create_graph=True)
    norms = grads.float().flatten(1).norm(dim=1)
    return (norms - target_norm).square().mean()
