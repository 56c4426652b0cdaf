"""The photometric re-reconstruction (emoedit.metrics.refit) on frames rendered from known coefficients.

A small procedural face, rendered with the same image formation the fitter uses (vertex
colours, SH light, the frame camera): the *input* has a near-neutral expression, the
*truth* adds a smile, a jaw drop and raised / lowered brows. Every fit starts from the
input's true coefficients with identity and albedo fixed, as in the evaluation.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from emoedit.face_model import MorphableModel, PerspectiveCamera
from emoedit.face_model.procedural import EXPRESSION_NAMES
from emoedit.metrics.geometry import expression_error, shape_vertex_error_mm
from emoedit.metrics.refit import FitErrors, ReReconstructor
from tests.recon_helpers import one_thread, render_faces  # noqa: F401  (one_thread: autouse fixture)

SIZE = 64  # frame side, pixels
FRAMES = 3
STEPS = 40  # the evaluation's default re-fit steps


@pytest.fixture(scope="module")
def scene() -> dict[str, object]:
    torch.set_num_threads(1)
    model = MorphableModel.procedural(resolution=32, num_identity=8, num_albedo=8)
    layout, sl = model.layout, model.layout.slices
    g = torch.Generator().manual_seed(0)
    start = layout.zeros(FRAMES)
    start[:, sl["id"]] = 0.6 * torch.randn(layout.id, generator=g)
    start[:, sl["tex"]] = 0.6 * torch.randn(layout.tex, generator=g)
    start[:, sl["angle"]] = torch.tensor([0.05, 0.1, 0.0])
    gamma = torch.zeros(FRAMES, 27)
    gamma[:, [0, 9, 18]], gamma[:, [1, 10, 19]] = 0.1, 0.2
    start[:, sl["gamma"]] = gamma
    truth = start.clone()
    names = list(EXPRESSION_NAMES)
    exp = truth[:, sl["exp"]]
    exp[:, names.index("AU12")] = 1.0
    exp[:, names.index("AU26")] = torch.linspace(0.5, 0.8, FRAMES)
    exp[:, names.index("AU1")] = 0.6
    exp[:, names.index("AU4")] = 0.5
    input_frames, landmarks = render_faces(model, start, SIZE, background=0.3)
    truth_frames, _ = render_faces(model, truth, SIZE, background=0.3)
    refit = ReReconstructor(face_model=model, camera=PerspectiveCamera().scaled(SIZE), photo_steps=STEPS,
                            render_size=SIZE)
    return {"model": model, "start": start, "truth": truth, "input_frames": input_frames,
            "truth_frames": truth_frames, "landmarks": landmarks, "refit": refit}


def _errors(model: MorphableModel, coeffs: Tensor, truth: Tensor) -> tuple[float, float]:
    """(expression MAE, pose-free vertex error in mm) of ``coeffs`` against ``truth``."""
    mine, true = model.layout.split(coeffs), model.layout.split(truth)
    exp = float(expression_error(mine.exp_coeff, true.exp_coeff).mean())
    vertex = float(shape_vertex_error_mm(model, mine.id_coeff, mine.exp_coeff, true.id_coeff, true.exp_coeff).mean())
    return exp, vertex


def test_the_truth_video_refits_closer_to_the_truth_than_the_input(scene) -> None:
    model, start, truth, refit = scene["model"], scene["start"], scene["truth"], scene["refit"]
    input_fit = refit.fit(scene["input_frames"], start, scene["landmarks"])
    truth_fit = refit.fit(scene["truth_frames"], start, scene["landmarks"])
    assert truth_fit.shape == start.shape and torch.isfinite(truth_fit).all()
    layout = model.layout
    for fit in (input_fit, truth_fit):  # identity and albedo stay the input's
        assert torch.equal(layout.split(fit).id_coeff, layout.split(start).id_coeff)
        assert torch.equal(layout.split(fit).tex_coeff, layout.split(start).tex_coeff)
    input_exp, input_vertex = _errors(model, input_fit, truth)
    truth_exp, truth_vertex = _errors(model, truth_fit, truth)
    change_exp, change_vertex = _errors(model, start, truth)
    assert change_vertex > 3.0  # the true edit: a visible change of the face (mm)
    # The input's frames are its own render: the fit stays at the start, i.e. "no edit" scores the true change.
    assert input_vertex == pytest.approx(change_vertex, rel=0.02) and input_exp == pytest.approx(change_exp, rel=0.02)
    # The truth's frames pull the fit to the true expression: the vertex (expression-displacement: the
    # identity is fixed) column ranks "ground truth" far above "input", and so does the expression MAE.
    assert truth_vertex < 0.15 * input_vertex, (truth_vertex, input_vertex)
    assert truth_exp < input_exp, (truth_exp, input_exp)


def test_a_fit_started_at_the_truth_stays_near_it(scene) -> None:
    model, truth, refit = scene["model"], scene["truth"], scene["refit"]
    fit = refit.fit(scene["truth_frames"], truth, scene["landmarks"])
    exp, vertex = _errors(model, fit, truth)
    change_exp, change_vertex = _errors(model, scene["start"], truth)
    assert exp < 0.2 * change_exp and vertex < 0.05 * change_vertex, (exp, vertex)
    errors = refit.errors(fit, truth, refit.landmarks(truth))
    assert isinstance(errors, FitErrors) and errors.landmark_px < 0.5  # frame pixels
    assert errors.vertex_mm == pytest.approx(vertex) and errors.exp_mae == pytest.approx(exp)
    assert set(errors.to_json()) == {"vertex_mm", "exp_mae", "landmark_px"}


def test_settings_shapes_and_description(scene) -> None:
    model = scene["model"]
    camera = PerspectiveCamera().scaled(SIZE)
    refit = ReReconstructor(face_model=model, camera=camera, photo_steps=3, render_size=512)
    assert refit.render_size == SIZE  # clamped to the frame side
    assert "3 steps, render 64 px" in refit.describe() and "identity and albedo fixed" in refit.describe()
    assert refit.landmarks(scene["start"]).shape == (FRAMES, 68, 2)
    with pytest.raises(ValueError, match="photo_steps"):
        ReReconstructor(face_model=model, camera=camera, photo_steps=0, render_size=32)
    with pytest.raises(ValueError, match="frames"):  # whole frames of the camera's size, not crops
        refit.fit(scene["input_frames"][..., :32, :32], scene["start"], scene["landmarks"])
