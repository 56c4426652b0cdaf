"""Scoring one output video of one evaluation item (every method by the same code).

:class:`Scorer` holds the scoring networks (judges, FID Inception, ArcFace, LPIPS, the
re-reconstructor), built once. For each item it first prepares an :class:`ItemReference`
(the input and ground-truth frames, masks, crops, the truth's features and
re-reconstruction — shared by every method), then :meth:`Scorer.score` turns an output
video into per-item metrics and the features of the set-level Fréchet distances.

Frames: the first ``max_frames`` of the clip (the inputs are cut to them), every
``frame_stride``-th. All ``(N, 3, H, W)`` float in [0, 1].

Where each metric looks (:data:`METRICS` lists names, directions and groups):

- **face region** (PSNR, SSIM, LPIPS, image jitter): the pixels covered by the true face
  mesh in the input frame or in the ground-truth frame (true coefficients, the world's
  camera: exact; :func:`emoedit.metrics.face_region.face_masks`), computed on the region's
  bounding box (:func:`face_box`: the same PSNR / SSIM / jitter as on the whole frame, and
  LPIPS of the face rather than of mostly background);
- **aligned crops** (emotion judge, identity judge, FED, FID, ArcSim's judge fallback):
  every frame of every video (input, truth, output) is aligned with the **input** frame's
  transform — Deep3D 5-point alignment of the input's true landmarks to the face model's
  template, as the frames cache the judges were trained on (uint8-rounded likewise), at
  ``crop_size``. The same window for all methods: no method is judged on a different crop;
- **full frames**: CPBD (no resampling, which would change sharpness); ArcSim with ArcFace
  weights (aligned to ArcFace's template from the input's landmarks, as
  :class:`~emoedit.metrics.identity.ArcSim` does);
- **re-reconstruction** (expression / vertex / lip-opening error, landmark jitter), one of
  (``rereconstruct`` in the config; :attr:`Scorer.rereconstruction` says which ran):

  - ``"regressor"``: the reconstructor of the bundle (or ``recon_checkpoint``) run on aligned
    crops of the video (the input's transform at the reconstructor's crop size; the input's
    landmarks mapped into the crop are passed along — a regressor ignores them);
  - ``"fitter"``: a photometric re-fit of the face model to the **whole frames** with the
    world's camera (:class:`~emoedit.metrics.refit.ReReconstructor`), every video of an item
    (input, truth, each output) started from the **input's** true coefficients with the
    input's true identity and albedo fixed — the same prior for every method. No regressor
    is needed; unlike a regressor trained on the world's crops, it measures expression
    from the pixels, so the ``ground truth`` row falls below the ``input`` row.

  Expression error = mean |exp − exp_true| against the ground-truth video's **true**
  coefficients; vertex error = mean distance (mm) of the pose-free shapes (id + exp);
  lip-opening error = mean |opening(output) − opening(input)| of the outer and inner lip
  pairs of the pose-free 3D shapes (mm), both measured by the same re-reconstruction, so
  its bias cancels; the ``ground truth`` reference row shows the reconstructor's own floor.
- **jitter**: order-2 (flicker) jitter of the output divided by the ground truth's on the
  same frames — in the face region of the images (``jitter``) and on the re-reconstructed
  landmarks (``lm_jitter``, against the truth video's re-reconstruction); 1 = as smooth
  as the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from emoedit.data.alignment import AlignmentTemplate, CropTransform, face_crop_transform, warp_to_crop
from emoedit.evaluation.splits import EvaluationItem
from emoedit.metrics.image_quality import SSIM_WINDOW
from emoedit.shape_checks import assert_shape


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its key in rows, its label in tables, which way is better, its table group."""

    key: str  # row key
    label: str  # table label
    direction: str  # "max" (↑), "min" (↓) or "one" (→ 1: closest to 1 is best)
    group: str  # "paper" (METHOD §6's four) or "exact" (synthetic-world truth)
    meaning: str  # one line for the tables' legend
    set_level: bool = False  # computed over the whole set (Fréchet distances), not per item


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("fed", "FED", "min", "paper", "Fréchet distance of emotion-judge features to the ground-truth edits",
               set_level=True),
    MetricSpec("fid", "FID", "min", "paper", "Fréchet Inception distance to the ground-truth edits (aligned crops)",
               set_level=True),
    MetricSpec("cpbd", "CPBD", "max", "paper", "sharpness (cumulative probability of blur detection), full frames"),
    MetricSpec("arcsim", "ArcSim", "max", "paper", "identity kept: cosine of recognition embeddings, input vs output"),
    MetricSpec("psnr", "PSNR (dB)", "max", "exact", "face region against the ground-truth edit"),
    MetricSpec("ssim", "SSIM", "max", "exact", "face region against the ground-truth edit"),
    MetricSpec("lpips", "LPIPS", "min", "exact", "face region against the ground-truth edit"),
    MetricSpec("exp_err", "expression err.", "min", "exact", "re-reconstructed vs true expression coefficients (MAE)"),
    MetricSpec("vertex_mm", "vertex err. (mm)", "min", "exact", "re-reconstructed vs true pose-free shape"),
    MetricSpec("lip_mm", "lip-opening err. (mm)", "min", "exact", "re-reconstructed lip openings, output vs input"),
    MetricSpec("emo_acc", "emotion acc.", "max", "exact", "emotion judge: fraction of frames judged the target"),
    MetricSpec("emo_conf", "target conf.", "max", "exact", "emotion judge: probability of the target emotion"),
    MetricSpec("id_sim", "ID sim. (judge)", "max", "exact", "identity judge: cosine of embeddings, input vs output"),
    MetricSpec("jitter", "flicker ratio", "one", "exact", "face-region order-2 jitter / the truth's (1 = as smooth)"),
    MetricSpec("lm_jitter", "landmark jitter ratio", "one", "exact",
               "re-reconstructed landmarks' order-2 jitter / the truth video's (1 = as smooth)"),
)
METRIC_BY_KEY: dict[str, MetricSpec] = {m.key: m for m in METRICS}
#: Fréchet distances below this are the round-off of identical feature sets (reported as 0).
FRECHET_ROUND_OFF = 1e-6
#: Frames per network call inside the scorer.
SCORE_BATCH = 32


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """A video's re-reconstruction on the scored frames."""

    coeffs: Tensor  # (N, L) float coefficients (pose for the reconstructor's crop camera, or the world's for the fitter)
    lip_openings: Tensor  # (N, 2) float outer / inner lip openings of the pose-free shape, model units
    landmarks: Tensor  # (N, 68, 2) float projected landmarks, frame pixels


@dataclass(frozen=True, eq=False)
class ItemReference:
    """Everything about one item that every method's score needs (computed once per item)."""

    item: EvaluationItem  # the item
    rows: Tensor  # (N,) int64 scored frame indices of the (cut) clip
    num_frames: int  # frames of the (cut) input clip
    target_class: int  # index of the target emotion in JUDGE_EMOTIONS
    input_frames: Tensor  # (N, 3, H, W) float [0, 1]
    truth_frames: Tensor  # (N, 3, H, W) float [0, 1]
    landmarks: Tensor  # (N, 68, 2) float the input's true landmarks, pixels
    truth_coeffs: Tensor  # (N, L) float the ground-truth edit's true coefficients
    input_coeffs: Tensor  # (N, L) float the input's true coefficients (the start of every photometric re-fit)
    mask: Tensor  # (N, 1, H, W) bool face region (input ∪ truth mesh)
    box: tuple[slice, slice]  # rows, columns of the face region's bounding box (+ the SSIM half window)
    crop_transform: CropTransform  # (N,) frame → judge crop (the input's alignment)
    input_crops: Tensor  # (N, 3, S, S) float [0, 1]
    truth_crops: Tensor  # (N, 3, S, S) float [0, 1]
    input_embedding: Tensor | None  # (N, D) identity-judge unit embeddings of the input crops
    truth_flicker: float | None  # order-2 face-region jitter of the truth (None: < 3 frames)
    recon_transform: CropTransform | None  # (N,) frame → reconstructor crop (regressor re-reconstruction only)
    input_fit: Reconstruction | None  # re-reconstruction of the input
    truth_fit: Reconstruction | None  # re-reconstruction of the ground-truth video
    real_features: dict[str, Tensor] = field(default_factory=dict)  # "fid"/"fed": (N, D) features of the truth crops


@dataclass(frozen=True, eq=False)
class ScoredOutput:
    """Per-item metrics of one output and its set-level features."""

    metrics: dict[str, float | None]  # METRICS keys (per-item ones); None = not measured
    features: dict[str, Tensor]  # "fid"/"fed": (N, D) float features of the output crops


def _mean(values: Tensor | None) -> float | None:
    if values is None:
        return None
    values = values.detach().to(torch.float64).flatten()
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else None


def _batched(function: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    return torch.cat([function(images[i:i + SCORE_BATCH]) for i in range(0, images.shape[0], SCORE_BATCH)])


class Scorer:
    """The scoring networks and the per-item metric code (see the module docstring)."""

    def __init__(
        self,
        *,
        face_model: Any,  # the world's MorphableModel (masks, pose-free shapes, alignment template)
        camera: Any,  # the world's PerspectiveCamera (face-region masks)
        crop_size: int,  # aligned crop side of the judges / FID / FED, pixels
        emotion_judge: nn.Module | None = None,  # EmotionJudge (emo_acc, emo_conf, FED)
        identity_judge: nn.Module | None = None,  # IdentityJudge (id_sim; ArcSim's fallback)
        arcface: nn.Module | None = None,  # ArcSim with real recognition weights; None: the identity judge's
        fid_network: nn.Module | None = None,  # FIDInceptionV3 with its weights; None: no FID
        lpips: nn.Module | None = None,  # LPIPSLoss from files; None: no LPIPS
        reconstructor: Any = None,  # Reconstructor of the world's face model (crops); used when refitter is None
        refitter: Any = None,  # ReReconstructor (photometric re-fit of whole frames); None: the reconstructor's
        device: str | torch.device = "cpu",  # where the networks run
        notes: list[str] | None = None,  # what was omitted or substituted, for the tables
    ) -> None:
        from emoedit.metrics.frechet import EmotionFeatures

        self.face_model = face_model
        self.camera = camera
        self.crop_size = int(crop_size)
        self.device = torch.device(device)
        self.template = AlignmentTemplate.from_face_model(face_model)
        self.emotion_judge = None if emotion_judge is None else emotion_judge.to(self.device).eval()
        self.identity_judge = None if identity_judge is None else identity_judge.to(self.device).eval()
        self.arcface = None if arcface is None else arcface.to(self.device).eval()
        self.fid_network = None if fid_network is None else fid_network.to(self.device).eval()
        self.fed_network = None if self.emotion_judge is None else EmotionFeatures.from_judge(self.emotion_judge)
        self.lpips = None if lpips is None else lpips.to(self.device).eval()
        self.notes = list(notes or [])
        self.reconstructor = None
        self.refitter = refitter
        if reconstructor is not None and refitter is None:
            layout = getattr(reconstructor.face_model, "layout", None)
            same = (layout == face_model.layout
                    and reconstructor.face_model.num_vertices == face_model.num_vertices)
            if same:
                self.reconstructor = reconstructor
            else:
                self.notes.append("the reconstructor's face model is not the world's: expression / vertex / lip "
                                  "errors and landmark jitter are omitted")
        self.arcsim_source = ("ArcFace" if self.arcface is not None
                              else "identity judge" if self.identity_judge is not None else None)

    @property
    def geometry(self) -> bool:
        """Whether the re-reconstruction metrics (expression / vertex / lip errors, landmark jitter) run."""
        return self.refitter is not None or self.reconstructor is not None

    @property
    def rereconstruction(self) -> dict[str, Any] | None:
        """How the geometry columns re-reconstruct a video (for results.json and the tables); None: they don't."""
        if self.refitter is not None:
            return {"mode": "fitter", "steps": self.refitter.photo_steps, "render_size": self.refitter.render_size,
                    "description": self.refitter.describe()}
        if self.reconstructor is not None:
            crop = getattr(self.reconstructor, "crop_size", None)
            return {"mode": "regressor", "reconstructor": type(self.reconstructor).__name__, "crop_size": crop,
                    "description": f"the reconstructor ({type(self.reconstructor).__name__}: the bundle's or "
                                   f"recon_checkpoint's) on aligned crops (the input's alignment, {crop} px)"}
        return None

    # ------------------------------------------------------------------ pieces
    def _face_masks(self, coeffs: Tensor, size: int) -> Tensor:
        from emoedit.metrics.face_region import face_masks

        return face_masks(self.face_model, self.camera, coeffs.to(self.face_model.mean_shape.device), size).cpu()

    def transform(self, landmarks: Tensor, frame_size: tuple[int, int], crop_size: int) -> CropTransform:
        """``(N,)`` frame → crop transforms aligning ``(N, 68, 2)`` landmarks (the frames cache's alignment)."""
        return face_crop_transform(landmarks.float(), self.template, frame_size=frame_size, crop_size=crop_size)

    @staticmethod
    def crops(frames: Tensor, transform: CropTransform) -> Tensor:
        """``(N, 3, S, S)`` float [0, 1] aligned crops, rounded to uint8 steps like the frames cache."""
        crops = warp_to_crop(frames, transform).clamp(0.0, 1.0)
        return crops.mul(255.0).round().div(255.0)

    def _judge_emotion(self, crops: Tensor) -> Tensor:
        """``(N, 8)`` float probabilities."""
        assert self.emotion_judge is not None
        with torch.no_grad():
            return _batched(lambda x: self.emotion_judge(x.to(self.device) * 2.0 - 1.0).probabilities.float().cpu(),
                            crops)

    def _embed(self, crops: Tensor) -> Tensor:
        """``(N, D)`` identity-judge unit embeddings."""
        assert self.identity_judge is not None
        with torch.no_grad():
            return _batched(lambda x: self.identity_judge(x.to(self.device) * 2.0 - 1.0).embedding.float().cpu(),
                            crops)

    def _features(self, crops: Tensor) -> dict[str, Tensor]:
        out = {}
        with torch.no_grad():
            if self.fid_network is not None:
                out["fid"] = _batched(lambda x: self.fid_network(x.to(self.device)).float().cpu(), crops)
            if self.fed_network is not None:
                out["fed"] = _batched(lambda x: self.fed_network(x.to(self.device)).float().cpu(), crops)
        return out

    def _lip_openings(self, coeffs: Tensor) -> Tensor:
        """``(N, 2)`` float lip openings of the pose-free shapes of ``coeffs``, model units (CPU)."""
        from emoedit.metrics.geometry import lip_opening_distances

        model = self.face_model
        parts = model.layout.split(coeffs.to(model.mean_shape.device))
        with torch.no_grad():
            shape = model.shape(parts.id_coeff, parts.exp_coeff)
            return lip_opening_distances(shape[:, model.landmark_ids]).float().cpu()

    def _regress(self, frames: Tensor, transform: CropTransform, landmarks: Tensor) -> Reconstruction:
        """The reconstructor on aligned crops of ``frames``; landmarks projected back into the frames."""
        recon = self.reconstructor
        assert recon is not None
        device = recon.face_model.mean_shape.device
        crops = self.crops(frames, transform).to(device)
        crop_landmarks = transform.frame_to_crop(landmarks.float()).to(device)
        coeffs = recon.reconstruct_clip(crops, crop_landmarks).detach().float()
        with torch.no_grad():
            projected = recon.face_model(coeffs.to(device), recon.camera).landmarks.float().cpu()
        return Reconstruction(coeffs=coeffs.cpu(), lip_openings=self._lip_openings(coeffs),
                              landmarks=transform.crop_to_frame(projected))

    def _refit(self, frames: Tensor, start_coeffs: Tensor, landmarks: Tensor) -> Reconstruction:
        """The photometric re-fit of the whole ``frames`` from ``start_coeffs`` (the input's truth)."""
        refitter = self.refitter
        assert refitter is not None
        coeffs = refitter.fit(frames, start_coeffs, landmarks).detach().float()
        return Reconstruction(coeffs=coeffs.cpu(), lip_openings=self._lip_openings(coeffs),
                              landmarks=refitter.landmarks(coeffs).float().cpu())

    def _rereconstruct(
        self,
        frames: Tensor,  # (N, 3, H, W) float [0, 1] the video's scored frames
        *,
        start_coeffs: Tensor,  # (N, L) float the input's true coefficients (the re-fit's start)
        landmarks: Tensor,  # (N, 68, 2) float the input's true landmarks, frame pixels
        transform: CropTransform | None,  # (N,) frame → reconstructor crop (regressor only)
    ) -> Reconstruction:
        """The re-reconstruction of one video (see the module docstring)."""
        if self.refitter is not None:
            return self._refit(frames, start_coeffs, landmarks)
        assert transform is not None
        return self._regress(frames, transform, landmarks)

    @staticmethod
    def _flicker(frames: Tensor, mask: Tensor) -> float | None:
        from emoedit.metrics.temporal import image_jitter

        if frames.shape[0] < 3:
            return None
        return float(image_jitter(frames, mask=mask, order=2))

    # ------------------------------------------------------------------ per item
    def reference(
        self,
        item: EvaluationItem,  # the item
        *,
        input_video: Path,  # the input the methods got (the item's, or its cut copy)
        num_frames: int,  # frames of that input
        frame_stride: int = 1,  # score every n-th frame
    ) -> ItemReference:
        """Prepare the item's shared data (see :class:`ItemReference`)."""
        from emoedit.data.synthetic.truth_format import load_clip_truth
        from emoedit.networks.judges import emotion_class_index
        from emoedit.video import read_frame_rows

        rows = torch.arange(0, num_frames, max(1, int(frame_stride)))
        input_truth, truth = load_clip_truth(item.input_truth), load_clip_truth(item.truth_truth)
        if truth.num_frames < num_frames or input_truth.num_frames < num_frames:
            raise ValueError(f"{item.truth_truth}: truth has {truth.num_frames} frames, the input {num_frames}")
        input_frames = read_frame_rows(input_video, rows, min_frames=num_frames)
        truth_frames = read_frame_rows(item.truth_video, rows, min_frames=num_frames)
        height, width = input_frames.shape[-2:]
        landmarks = input_truth.landmarks[rows].float()
        truth_coeffs = truth.coeffs[rows].float()
        input_coeffs = input_truth.coeffs[rows].float()
        mask = self._face_masks(input_coeffs, height) | self._face_masks(truth_coeffs, height)
        box = face_box(mask)
        transform = self.transform(landmarks, (height, width), self.crop_size)
        input_crops, truth_crops = self.crops(input_frames, transform), self.crops(truth_frames, transform)
        recon_transform = input_fit = truth_fit = None
        if self.geometry:
            if self.refitter is None:
                recon_transform = self.transform(landmarks, (height, width), self.reconstructor.crop_size)
            elif (height, width) != (self.refitter.camera.image_size,) * 2:
                raise ValueError(f"{input_video}: frames {height}x{width} but the re-fit's camera is "
                                 f"{self.refitter.camera.image_size} px square (the world's frames)")
            input_fit = self._rereconstruct(input_frames, start_coeffs=input_coeffs, landmarks=landmarks,
                                            transform=recon_transform)
            truth_fit = self._rereconstruct(truth_frames, start_coeffs=input_coeffs, landmarks=landmarks,
                                            transform=recon_transform)
        return ItemReference(
            item=item, rows=rows, num_frames=num_frames, target_class=int(emotion_class_index([item.emotion])[0]),
            input_frames=input_frames, truth_frames=truth_frames, landmarks=landmarks, truth_coeffs=truth_coeffs,
            input_coeffs=input_coeffs,
            mask=mask, box=box, crop_transform=transform, input_crops=input_crops, truth_crops=truth_crops,
            input_embedding=None if self.identity_judge is None else self._embed(input_crops),
            truth_flicker=self._flicker(truth_frames[..., box[0], box[1]], mask[..., box[0], box[1]]),
            recon_transform=recon_transform, input_fit=input_fit,
            truth_fit=truth_fit, real_features=self._features(truth_crops),
        )

    def score(self, ref: ItemReference, output_video: Path) -> ScoredOutput:
        """Per-item metrics and features of one output video (see the module docstring)."""
        from emoedit.metrics.cpbd import cpbd
        from emoedit.metrics.geometry import MM_PER_MODEL_UNIT, expression_error, shape_vertex_error_mm
        from emoedit.metrics.image_quality import image_quality
        from emoedit.metrics.temporal import landmark_jitter
        from emoedit.video import read_frame_rows

        frames = read_frame_rows(output_video, ref.rows, min_frames=ref.num_frames)
        if frames.shape != ref.truth_frames.shape:
            raise ValueError(f"{output_video}: frames {tuple(frames.shape)} but the truth has "
                             f"{tuple(ref.truth_frames.shape)}")
        metrics: dict[str, float | None] = {m.key: None for m in METRICS if not m.set_level}
        rows_, cols = ref.box
        region, truth_region, mask_region = (t[..., rows_, cols] for t in (frames, ref.truth_frames, ref.mask))
        quality = image_quality(region, truth_region, mask_region,
                                lpips=None if self.lpips is None else _DeviceLPIPS(self.lpips, self.device))
        metrics["psnr"], metrics["ssim"] = _mean(quality.psnr), _mean(quality.ssim)
        metrics["lpips"] = _mean(quality.lpips)
        if min(frames.shape[-2:]) >= 64:
            metrics["cpbd"] = _mean(cpbd(frames))
        crops = self.crops(frames, ref.crop_transform)
        if self.emotion_judge is not None:
            probabilities = self._judge_emotion(crops)
            metrics["emo_acc"] = _mean((probabilities.argmax(dim=1) == ref.target_class).double())
            metrics["emo_conf"] = _mean(probabilities[:, ref.target_class])
        if self.identity_judge is not None:
            assert ref.input_embedding is not None
            metrics["id_sim"] = _mean((self._embed(crops) * ref.input_embedding).sum(dim=1))
        if self.arcface is not None:
            with torch.no_grad():
                metrics["arcsim"] = _mean(self.arcface(ref.input_frames.to(self.device), frames.to(self.device),
                                                       ref.landmarks.to(self.device)).cpu())
        else:
            metrics["arcsim"] = metrics["id_sim"]
        if ref.truth_flicker is not None and ref.truth_flicker > 0:
            flicker = self._flicker(region, mask_region)
            metrics["jitter"] = None if flicker is None else flicker / ref.truth_flicker
        if self.geometry:
            assert ref.input_fit is not None and ref.truth_fit is not None
            if torch.equal(frames, ref.input_frames):  # the same pixels and start: the same (deterministic) fit
                fit = ref.input_fit
            elif torch.equal(frames, ref.truth_frames):
                fit = ref.truth_fit
            else:
                fit = self._rereconstruct(frames, start_coeffs=ref.input_coeffs, landmarks=ref.landmarks,
                                          transform=ref.recon_transform)
            model = self.face_model
            mine, true = model.layout.split(fit.coeffs), model.layout.split(ref.truth_coeffs)
            metrics["exp_err"] = _mean(expression_error(mine.exp_coeff, true.exp_coeff))
            with torch.no_grad():
                device = model.mean_shape.device
                metrics["vertex_mm"] = _mean(shape_vertex_error_mm(
                    model, mine.id_coeff.to(device), mine.exp_coeff.to(device), true.id_coeff.to(device),
                    true.exp_coeff.to(device)).cpu())
            lips = (fit.lip_openings - ref.input_fit.lip_openings).abs().mean(dim=1) * MM_PER_MODEL_UNIT
            metrics["lip_mm"] = _mean(lips)
            if frames.shape[0] >= 3:
                truth_jitter = float(landmark_jitter(ref.truth_fit.landmarks, order=2))
                if truth_jitter > 0:
                    metrics["lm_jitter"] = float(landmark_jitter(fit.landmarks, order=2)) / truth_jitter
        return ScoredOutput(metrics=metrics, features=self._features(crops))

    def target_confidence(
        self,
        frames: Tensor,  # (N, 3, H, W) float [0, 1]
        landmarks: Tensor,  # (N, 68, 2) float the input's landmarks (the alignment)
        emotion: str,  # target emotion
    ) -> float:
        """Mean emotion-judge probability of ``emotion`` over the frames (intensity sweep)."""
        from emoedit.networks.judges import emotion_class_index

        assert_shape(frames, ("N", 3, None, None), "frames")
        if self.emotion_judge is None:
            raise ValueError("target_confidence needs the emotion judge")
        transform = self.transform(landmarks, tuple(frames.shape[-2:]), self.crop_size)
        probabilities = self._judge_emotion(self.crops(frames, transform))
        return float(probabilities[:, int(emotion_class_index([emotion])[0])].mean())


class _DeviceLPIPS(nn.Module):
    """LPIPS on the scorer's device, results back on the CPU."""

    def __init__(self, lpips: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.lpips, self.device = lpips, device

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.lpips(x.to(self.device), y.to(self.device)).cpu()


def face_box(
    mask: Tensor,  # (N, 1, H, W) bool face region
    *,
    margin: int = SSIM_WINDOW // 2,  # pixels added on every side (SSIM windows centred in the region stay whole)
) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of the region over all frames, grown by ``margin``.

    The masked PSNR, SSIM and jitter are the same on the box as on the whole frame (they only
    count pixels / window centres inside the mask; the box keeps every SSIM window whose
    centre the full-frame SSIM would count); LPIPS is taken on the box (the face, not the
    background). An empty mask gives the whole frame.
    """
    assert_shape(mask, (None, 1, None, None), "mask")
    height, width = mask.shape[-2:]
    rows = torch.nonzero(mask.any(dim=(0, 1, 3))).flatten()
    cols = torch.nonzero(mask.any(dim=(0, 1, 2))).flatten()
    if rows.numel() == 0:
        return slice(0, height), slice(0, width)
    top, bottom = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, height)
    left, right = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, width)
    if bottom - top < SSIM_WINDOW or right - left < SSIM_WINDOW:  # too small for one SSIM window
        return slice(0, height), slice(0, width)
    return slice(top, bottom), slice(left, right)


def frechet_from_features(
    fake: list[Tensor],  # per-item (N_i, D) features of a method's outputs
    real: list[Tensor],  # per-item (N_i, D) features of the ground-truth edits
) -> float | None:
    """Fréchet distance of the pooled features (None with fewer than 2 samples on a side; round-off → 0)."""
    from emoedit.metrics.frechet import frechet_distance_from_features

    if not fake or not real:
        return None
    a, b = torch.cat(fake), torch.cat(real)
    if a.shape[0] < 2 or b.shape[0] < 2:
        return None
    value = float(frechet_distance_from_features(a, b))
    if not math.isfinite(value):
        return None
    return 0.0 if value < FRECHET_ROUND_OFF else value


__all__ = [
    "ItemReference",
    "METRICS",
    "METRIC_BY_KEY",
    "MetricSpec",
    "Reconstruction",
    "ScoredOutput",
    "Scorer",
    "face_box",
    "frechet_from_features",
]
