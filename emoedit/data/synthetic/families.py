"""Look-alike families: subjects whose appearance and emotional texture co-vary.

With ``WorldPreset.subject_model == "families"`` (:mod:`~emoedit.data.synthetic.presets`)
the world draws ``num_families`` family *prototypes* with exactly the machinery of an
ordinary subject (:class:`~emoedit.data.synthetic.subjects.SubjectFactory`, random streams
``("family", k, ...)``), and every subject — training and unseen — is its family's
prototype blended toward its own independent draw (the stream an independent world would
give it) by ``spread = WorldPreset.family_spread``:

- every **continuous** random variate (a normal or uniform draw: identity and albedo
  coefficients, skin tone, log-normal gains in log space, wrinkle line positions, angles,
  lengths and depths, flush proportions, noise fields) is ``(1 − spread)·prototype +
  spread·own`` — the same as ``prototype + spread·(own − prototype)``; a convex combination,
  so every variate stays inside the range it is drawn from and every map stays valid;
- every **discrete** variate (a count, a palette index, a position picked from a list) is
  the prototype's with probability ``1 − spread``, else the subject's own;
- the subject's **sex** (voice pitch, stubble) is the family's with probability
  ``1 − spread``, else the subject's own (:func:`member_sex`).

So ``spread = 0`` makes clones of the prototype, ``spread = 1`` gives exactly the subjects of
the independent world (same names, same random streams, bit-identical), and in between the
wrinkle lines of a member are the family's lines moved by ``spread`` times the distance to
its own lines — look-alikes that also wrinkle and flush alike.

Draws that follow a variable-length loop (e.g. the lines after a count) would fall out of
step with the prototype's once a member's count differs; the painters therefore call
:func:`sync_point` at fixed places (a no-op for an ordinary generator), where a member's
prototype stream is set back to the state the prototype itself had there
(:class:`StateRecorder` records those states while the prototype is painted).

Family membership is round-robin (:func:`assign_families`).
"""

from __future__ import annotations

import copy
from typing import Any, Union

import numpy as np

from emoedit.data.synthetic.seeding import derive_rng

#: Ways subjects are drawn (``WorldPreset.subject_model``): ``"independent"``: every subject
#: on its own; ``"families"``: blended from family prototypes (module docstring).
SUBJECT_MODELS: tuple[str, ...] = ("independent", "families")


class StateRecorder:
    """A numpy generator that also records its state at every :func:`sync_point` (prototypes).

    Draws are exactly the wrapped generator's; ``states`` maps each sync label to the
    generator's ``bit_generator.state`` when the painter reached it.
    """

    def __init__(self, rng: np.random.Generator) -> None:  # the prototype's stream
        self._rng = rng
        self.states: dict[str, dict[str, Any]] = {}

    def sync(self, label: str) -> None:
        """Record the state at ``label`` (each label once per painting)."""
        if label in self.states:
            raise RuntimeError(f"sync point {label!r} reached twice while painting a family prototype")
        self.states[label] = copy.deepcopy(self._rng.bit_generator.state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rng, name)


class FamilyBlendRng:
    """The random source of a family member: the prototype's draws blended toward its own.

    Supports the generator methods the painters use: ``normal``, ``uniform``, ``random``
    (continuous: ``(1 − spread)·prototype + spread·own``, elementwise) and ``integers``,
    ``choice``, ``poisson`` (discrete: the prototype's outcome with probability
    ``1 − spread``, one decision per call). Both streams see every call with the same
    arguments; :meth:`sync` re-aligns the prototype stream (module docstring).
    """

    def __init__(
        self,
        *,
        prototype: np.random.Generator,  # the family prototype's stream (fresh, same keys as the prototype's)
        own: np.random.Generator,  # the member's independent stream
        switch: np.random.Generator,  # decides each discrete draw
        spread: float,  # 0 = the prototype's draws, 1 = the member's own
        prototype_states: dict[str, dict[str, Any]],  # StateRecorder.states of the prototype's painting
    ) -> None:
        if not 0.0 <= spread <= 1.0:
            raise ValueError(f"family spread must be in [0, 1], got {spread}")
        self._prototype = prototype
        self._own = own
        self._switch = switch
        self._spread = float(spread)
        self._states = prototype_states

    def sync(self, label: str) -> None:
        """Set the prototype stream to the state the prototype had at ``label`` (if it got there)."""
        state = self._states.get(label)
        if state is not None:
            self._prototype.bit_generator.state = copy.deepcopy(state)

    def _blend(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = getattr(self._prototype, method)(*args, **kwargs)
        b = getattr(self._own, method)(*args, **kwargs)
        # (1 - s)·a + s·b: exactly a at s = 0 and exactly b at s = 1.
        return (1.0 - self._spread) * a + self._spread * b

    def _pick(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = getattr(self._prototype, method)(*args, **kwargs)
        b = getattr(self._own, method)(*args, **kwargs)
        return b if self._switch.random() < self._spread else a

    def normal(self, *args: Any, **kwargs: Any) -> Any:
        """Blended ``Generator.normal``."""
        return self._blend("normal", args, kwargs)

    def uniform(self, *args: Any, **kwargs: Any) -> Any:
        """Blended ``Generator.uniform`` (stays in ``[low, high)``)."""
        return self._blend("uniform", args, kwargs)

    def random(self, *args: Any, **kwargs: Any) -> Any:
        """Blended ``Generator.random`` (stays in ``[0, 1)``)."""
        return self._blend("random", args, kwargs)

    def integers(self, *args: Any, **kwargs: Any) -> Any:
        """``Generator.integers`` of the prototype or of the member."""
        return self._pick("integers", args, kwargs)

    def choice(self, *args: Any, **kwargs: Any) -> Any:
        """``Generator.choice`` of the prototype or of the member."""
        return self._pick("choice", args, kwargs)

    def poisson(self, *args: Any, **kwargs: Any) -> Any:
        """``Generator.poisson`` of the prototype or of the member."""
        return self._pick("poisson", args, kwargs)


#: What the subject painters draw from: a numpy generator, or a family's recorder / blend.
RandomSource = Union[np.random.Generator, StateRecorder, FamilyBlendRng]


def sync_point(rng: RandomSource, label: str) -> None:
    """A fixed place in a painter where family streams re-align (no-op for a numpy generator)."""
    sync = getattr(rng, "sync", None)
    if sync is not None:
        sync(label)


def family_sex(seed: int, family: int) -> str:
    """The family prototype's sex, ``"M"`` or ``"W"`` (stream ``("family", family, "sex")``)."""
    return "M" if derive_rng(seed, "family", family, "sex").random() < 0.5 else "W"


def member_sex(seed: int, index: int, own_sex: str, family: int, spread: float) -> str:
    """A member's sex: the family's with probability ``1 − spread``, else ``own_sex``.

    ``index`` is the subject's roster position (its name depends on its sex).
    """
    if derive_rng(seed, "family", "member", index, "sex").random() < spread:
        return own_sex
    return family_sex(seed, family)


def assign_families(num_train: int, num_unseen: int, num_families: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Round-robin family indices: ``(families of the training subjects, of the unseen ones)``.

    Training subject ``i`` joins family ``i mod num_families`` (so every family has training
    members when ``num_families <= num_train``). Unseen subjects go round-robin over the
    families with at least two training members (all families if none has two).
    """
    if not 1 <= num_families <= num_train:
        raise ValueError(f"num_families must be in [1, {num_train}] (the training subjects), got {num_families}")
    train = tuple(i % num_families for i in range(num_train))
    sizes = [train.count(f) for f in range(num_families)]
    eligible = [f for f in range(num_families) if sizes[f] >= 2] or list(range(num_families))
    unseen = tuple(eligible[j % len(eligible)] for j in range(num_unseen))
    return train, unseen
