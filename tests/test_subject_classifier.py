"""Subject classifier f over UV textures: shapes, softmax weights, regression, round trips."""

from __future__ import annotations

import pytest
import torch

from emoedit.networks.subject_classifier import SubjectClassifier

TINY = dict(input_size=32, depth=10, widths=(8, 16, 32, 64))
SUBJECTS = ("a", "b", "c")


def _textures(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


def test_outputs_logits_and_softmax_weights():
    classifier = SubjectClassifier(subjects=SUBJECTS, **TINY).eval()
    out = classifier(_textures())
    assert out.logits.shape == out.subject_weights.shape == (2, 3)
    assert torch.isfinite(out.logits).all()
    assert torch.allclose(out.subject_weights.sum(-1), torch.ones(2))
    assert torch.allclose(out.subject_weights, torch.softmax(out.logits, -1))
    assert classifier(_textures(size=64)).logits.shape == (2, 3)  # resized to input_size
    assert classifier.num_subjects == 3 and classifier.subjects == SUBJECTS


def test_subject_names_are_checked():
    with pytest.raises(ValueError, match="repeated"):
        SubjectClassifier(subjects=("a", "a"), **TINY)
    with pytest.raises(ValueError, match="at least one subject"):
        SubjectClassifier(subjects=(), **TINY)
    classifier = SubjectClassifier(subjects=SUBJECTS, **TINY)
    assert classifier.subject_index(["c", "a"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="not among"):
        classifier.subject_index(["zz"])


def test_seeded_regression():
    torch.manual_seed(0)
    classifier = SubjectClassifier(subjects=SUBJECTS, **TINY).eval()
    with torch.no_grad():
        logits = classifier(_textures()).logits
    expected = torch.tensor([[-0.07912497222423553, -0.037977758795022964, -0.11063132435083389],
                             [-0.08802702277898788, -0.02003275230526924, -0.102458655834198]])
    assert torch.allclose(logits, expected, atol=1e-5)


def test_learns_and_round_trips(tmp_path):
    torch.manual_seed(0)
    classifier = SubjectClassifier(subjects=SUBJECTS, dropout=0.0, **TINY)
    x = _textures(batch=6, seed=7)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimiser = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    first = None
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(classifier(x).logits, labels)
        first = float(loss.detach()) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss.detach()) < first
    path = tmp_path / "classifier.pt"
    torch.save(classifier.state_dict(), path)
    kwargs = classifier.init_kwargs
    clone = SubjectClassifier(**{**kwargs, "widths": tuple(kwargs["widths"])})
    clone.load_state_dict(torch.load(path, weights_only=True), strict=True)
    classifier.eval(), clone.eval()
    assert torch.equal(classifier(x).logits, clone(x).logits)
