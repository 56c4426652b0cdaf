"""The evaluation harness on a tiny synthetic world, with fake methods whose outputs are known.

- "ours" is a fake that copies the ground-truth edit: PSNR at the cap, SSIM 1, the same
  judged numbers as the ``ground truth`` reference, flicker ratio 1;
- "w/o shape" is a fake that returns the input: the ``input (no edit)`` reference's numbers;
- "StarGAN" is the real crop-baseline path (align, edit, paste back, encode) with a fake
  crop editor that brightens the crop.

Judges and the reconstructor are tiny untrained stand-ins: the tests check the plumbing
and the known answers that hold whatever the weights.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from emoedit.atomic_io import atomic_path
from emoedit.config import ConfigError
from emoedit.data.synthetic import SyntheticWorld
from emoedit.evaluation.config import load_evaluate_config
from emoedit.evaluation.harness import ROWS_FILE, RowStore, build_scorer, run_evaluation
from emoedit.evaluation.methods import (
    INPUT_REFERENCE,
    TRUTH_REFERENCE,
    CropBaselineMethod,
    EvaluationMethod,
    MethodInput,
    MethodRegistry,
    ReferenceMethod,
    SkippedMethod,
    build_methods,
    canonical_method_name,
    crop_paste_mask,
    method_slug,
)
from emoedit.evaluation.splits import evaluation_items, evaluation_sets
from emoedit.metrics.image_quality import PSNR_CAP_DB
from emoedit.networks.judges import EmotionJudge, IdentityJudge
from emoedit.reconstruction.reconstructor import Reconstructor

TINY_JUDGE = dict(input_size=32, depth=10, widths=(8, 8, 16, 16))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The module-scoped fixtures run before conftest's per-test thread pin: pin it here too."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` synthetic world (seed 0), generated once per session (~5 s)."""
    from emoedit.data.synthetic.world import generate_world

    root = tmp_path_factory.mktemp("evaluation_world") / "tiny"
    generate_world(root, "tiny", 0, progress=False)
    return root


@pytest.fixture(scope="module")
def judges(tmp_path_factory: pytest.TempPathFactory, tiny_world: Path) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("judges")
    torch.manual_seed(1)
    world = SyntheticWorld.open(tiny_world)
    emotion = EmotionJudge(**TINY_JUDGE).eval()
    identity = IdentityJudge(subjects=list(world.train_subjects), **TINY_JUDGE).eval()
    return {"emotion": str(emotion.save(folder / "emotion.ckpt")),
            "identity": str(identity.save(folder / "identity.ckpt"))}


class CopyMethod(EvaluationMethod):
    """A fake method under a real method's name: copies the truth or the input; counts its calls."""

    def __init__(self, name: str, source: str) -> None:
        self.name, self.kind, self.source, self.calls = name, "ours" if name == "ours" else "ablation", source, 0

    def produce(self, source: MethodInput, out_path: Path) -> dict[str, Any]:
        self.calls += 1
        path = source.truth_video if self.source == "truth" else source.input_video
        with atomic_path(out_path) as tmp:
            shutil.copyfile(path, tmp)
        return {"fake": self.source}


class BrightenEditor:
    """A CropEditor stand-in: lifts the crop towards white by the strongest code entry / 2."""

    name = "brighten"
    crop_size = 32

    def edit(self, crops: Tensor, emotion_codes: Tensor) -> Tensor:
        strength = emotion_codes.max(dim=1).values[:, None, None, None]
        return crops + (1.0 - crops) * 0.5 * strength


class MeanColourReconstructor(Reconstructor):
    """Deterministic stand-in on the world's face model: expression 0 = mean crop brightness."""

    def __init__(self, face_model: Any, crop_size: int = 32) -> None:
        from emoedit.face_model import PerspectiveCamera

        self.face_model = face_model
        self.camera = PerspectiveCamera().scaled(crop_size)
        self.calls = 0

    def reconstruct_clip(self, crops: Tensor, landmarks: Tensor) -> Tensor:
        self._check_inputs(crops, landmarks)
        self.calls += 1
        layout = self.face_model.layout
        coeffs = torch.zeros(crops.shape[0], layout.size)
        coeffs[:, layout.slices["exp"].start] = crops.mean(dim=(1, 2, 3)) * 4.0
        coeffs[:, layout.slices["trans"].start + 2] = 0.0
        return coeffs


def _config(world: Path, out: Path, judges: dict[str, str], **changes: Any):
    overrides = [f"world={world}", f"out={out}", f"judges.emotion={judges['emotion']}",
                 f"judges.identity={judges['identity']}", "sets=seen,unseen_views", "max_items=2",
                 "monotonicity.items=1", "monotonicity.alphas=[0.0,0.5,1.0]", "monotonicity.methods=[StarGAN]",
                 "progress=false"]
    overrides += [f"{k}={v}" for k, v in changes.items()]
    return load_evaluate_config(None, overrides)


def _registry(world: SyntheticWorld) -> MethodRegistry:
    stargan = CropBaselineMethod(name="StarGAN", editor=BrightenEditor(), face_model=world.face_model(), batch_size=3)
    return MethodRegistry(methods=[CopyMethod("ours", "truth"), CopyMethod("w/o shape", "input"), stargan,
                                   ReferenceMethod(name=INPUT_REFERENCE), ReferenceMethod(name=TRUTH_REFERENCE)],
                          skipped=[SkippedMethod("pSp", "no baselines.psp_tgan checkpoint configured")])


@pytest.fixture(scope="module")
def evaluated(tiny_world: Path, judges: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("evaluation")
    cfg = _config(tiny_world, out, judges)
    world = SyntheticWorld.open(tiny_world)
    registry = _registry(world)
    scorer = build_scorer(cfg, world)
    scorer.reconstructor = MeanColourReconstructor(world.face_model())
    first = run_evaluation(cfg, registry=registry, scorer=scorer)
    return {"cfg": cfg, "world": world, "registry": registry, "scorer": scorer, "first": first, "out": out}


# --------------------------------------------------------------------------- splits
def test_sets_follow_the_world_split(tiny_world: Path) -> None:
    world = SyntheticWorld.open(tiny_world)
    sets = evaluation_sets(world)
    seen = sets["seen"]
    assert len(seen) == len(world.train_subjects) * len(world.preset.emotions) == 6
    assert {i.subject for i in seen} == set(world.train_subjects) and {i.view for i in seen} == {"front"}
    assert all(i.level == 3 and i.alpha == 1.0 and float(i.emotion_code.max()) == 1.0 for i in seen)
    held = {(s, c) for s, clips in world.split.held_out_neutral_clips.items() for c in clips}
    assert {(i.subject, i.clip) for i in seen} == held
    assert {i.subject for i in sets["unseen_subjects"]} == set(world.unseen_subjects)
    assert {i.view for i in sets["unseen_views"]} == {"left_30"}
    assert all(i.truth_video.is_file() and i.input_video.is_file() for s in sets.values() for i in s)
    two = evaluation_items(world, "seen", max_items=2)  # a spread: two emotions, two subjects
    assert len({i.emotion for i in two}) == 2 and len({i.subject for i in two}) == 2
    with pytest.raises(ValueError, match="unknown evaluation set"):
        evaluation_items(world, "seen_subjects")
    with pytest.raises(ValueError, match="no emotions"):
        evaluation_items(world, "seen", emotions=["sad"])


# --------------------------------------------------------------------------- known answers
def test_truth_and_input_fakes_score_like_the_references(evaluated) -> None:
    summary = evaluated["first"].summary("seen")
    ours, truth = summary["ours"], summary[TRUTH_REFERENCE]
    inputs, wo_shape = summary[INPUT_REFERENCE], summary["w/o shape"]
    assert ours["psnr"] == pytest.approx(PSNR_CAP_DB) and ours["ssim"] == pytest.approx(1.0)
    assert ours["jitter"] == pytest.approx(1.0) and ours["lm_jitter"] == pytest.approx(1.0)
    for key in ("emo_acc", "emo_conf", "id_sim", "cpbd", "exp_err", "vertex_mm", "lip_mm"):
        assert ours[key] == pytest.approx(truth[key]), key
        assert wo_shape[key] == pytest.approx(inputs[key]), key
    assert inputs["lip_mm"] == pytest.approx(0.0, abs=1e-9)  # the input against itself
    assert inputs["id_sim"] == pytest.approx(1.0, abs=1e-5)  # unit embeddings of identical crops
    assert inputs["arcsim"] == inputs["id_sim"]  # no ArcFace weights: the identity judge, said in the notes
    assert any("ArcSim is computed with the identity judge" in n for n in evaluated["first"].results["notes"])
    assert ours["fid"] is None and ours["fed"] == pytest.approx(0.0, abs=1e-6)  # truth vs itself; no FID weights
    assert inputs["fed"] > 0.0
    assert inputs["psnr"] < PSNR_CAP_DB - 10 and 0.0 <= summary["StarGAN"]["emo_acc"] <= 1.0
    assert math.isfinite(summary["StarGAN"]["psnr"]) and summary["StarGAN"]["psnr"] < PSNR_CAP_DB


def test_ordering_checks_and_tables(evaluated) -> None:
    results = evaluated["first"].results
    ordering = results["sets"]["seen"]["ordering"]
    assert ordering["table2_ablations_worse"]["psnr"]["holds"] is True  # truth copy beats the input copy
    assert ordering["table2_ablations_worse"]["lpips"]["holds"] is None  # not measured
    table = evaluated["first"].tables_path.read_text(encoding="utf-8")
    assert "### Table 1" in table and "### Table 2" in table and "| PSNR (dB) ↑ | **100** |" in table
    assert "pSp: no baselines.psp_tgan checkpoint configured" in table
    assert "ArcSim†" in table and "FID" not in table.split("### Metrics")[0].split("Notes")[-1].split("## Set")[1]
    assert "preset **tiny**, seed **0**" in table
    assert results["skipped"] == [{"name": "pSp", "reason": "no baselines.psp_tgan checkpoint configured"}]


def test_outputs_rows_and_features_on_disk(evaluated) -> None:
    out: Path = evaluated["out"]
    rows = [json.loads(line) for line in (out / ROWS_FILE).read_text().splitlines()]
    assert len(rows) == 2 * 2 * 5  # 2 sets × 2 items × 5 methods
    assert {r["method"] for r in rows} == {"ours", "w/o shape", "StarGAN", INPUT_REFERENCE, TRUTH_REFERENCE}
    for row in rows:
        video = Path(row["video"])
        assert video.is_file() and video.parent.parent.name == method_slug(row["method"])
        assert row["frames"] == 8 and set(row["metrics"]) >= {"psnr", "emo_acc", "jitter"}
    assert (out / "features" / "_real" / "seen").is_dir() and (out / "features" / "stargan" / "seen").is_dir()
    assert json.loads((out / "results.json").read_text())["format"] == "emoedit-evaluation"


def test_baseline_pastes_an_edited_crop_into_the_frame(evaluated) -> None:
    from emoedit.video import read_video

    row = next(json.loads(line) for line in (evaluated["out"] / ROWS_FILE).read_text().splitlines()
               if json.loads(line)["method"] == "StarGAN")
    item = next(i for i in evaluation_items(evaluated["world"], row["set"], max_items=2) if i.item_id == row["item"])
    edited, info = read_video(row["video"])
    original, _ = read_video(item.input_video)
    assert edited.shape == original.shape and info.fps == 25
    change = edited.astype(float) - original.astype(float)
    assert change.mean() > 5.0  # the face crop got brighter
    assert abs(change[:, :2, :2]).max() <= 4.0  # the frame corner is outside the crop: codec noise only


def test_monotonicity_rows(evaluated) -> None:
    mono = evaluated["first"].results["monotonicity"]
    assert mono["alphas"] == [0.0, 0.5, 1.0] and set(mono["methods"]) == {"StarGAN", TRUTH_REFERENCE}
    for block in mono["methods"].values():
        assert block["items"] == 1 and set(block["mean_confidence"]) == {"0", "0.5", "1"}
        assert -1.0 <= block["spearman"] <= 1.0 or block["spearman"] is None
    assert "## Intensity monotonicity" in evaluated["first"].tables_path.read_text()


# --------------------------------------------------------------------------- resume
def test_second_run_does_no_work(evaluated) -> None:
    registry, scorer = evaluated["registry"], evaluated["scorer"]
    calls = [m.calls for m in registry.methods if isinstance(m, CopyMethod)]
    recon_calls = scorer.reconstructor.calls
    again = run_evaluation(evaluated["cfg"], registry=registry, scorer=scorer, notes=["a caller's note"])
    assert (again.produced, again.scored) == (0, 0)
    assert again.results["notes"][0] == "a caller's note"  # caller notes reach results.json and tables.md
    out = Path(evaluated["cfg"].out)
    assert "a caller's note" in (out / "tables.md").read_text() and "a caller's note" in (out / "results.json").read_text()
    assert [m.calls for m in registry.methods if isinstance(m, CopyMethod)] == calls
    assert scorer.reconstructor.calls == recon_calls
    assert again.summary("seen") == evaluated["first"].summary("seen")


def test_interrupted_run_continues_and_torn_rows_are_dropped(evaluated, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(evaluated["out"], out)
    lines = (out / ROWS_FILE).read_text().splitlines()
    (out / ROWS_FILE).write_text("\n".join(lines[:-2]) + "\n" + lines[-2][: len(lines[-2]) // 2])  # torn last row
    world = evaluated["world"]
    registry = _registry(world)
    cfg = evaluated["cfg"]
    cfg = load_evaluate_config(None, [f"{k}={v}" for k, v in (("world", cfg.world), ("out", out))] +
                               [f"judges.emotion={cfg.judges.emotion}", f"judges.identity={cfg.judges.identity}",
                                "sets=seen,unseen_views", "max_items=2", "monotonicity.items=1",
                                "monotonicity.alphas=[0.0,0.5,1.0]", "monotonicity.methods=[StarGAN]",
                                "progress=false"])
    scorer = evaluated["scorer"]
    again = run_evaluation(cfg, registry=registry, scorer=scorer)
    assert again.produced == 0 and again.scored == 2  # the two lost rows are rescored, their videos reused
    assert len(RowStore(out / ROWS_FILE, ("set", "item", "method")).rows) == 20
    first = evaluated["first"].summary("seen")
    for method, values in again.summary("seen").items():
        for key, value in values.items():
            assert value == (None if first[method][key] is None else pytest.approx(first[method][key])), (method, key)


def test_changed_scoring_settings_refuse_to_resume(evaluated) -> None:
    cfg = evaluated["cfg"]
    changed = load_evaluate_config(None, [f"world={cfg.world}", f"out={cfg.out}", "frame_stride=2", "progress=false"])
    with pytest.raises(ValueError, match="frame_stride"):
        run_evaluation(changed, registry=evaluated["registry"], scorer=evaluated["scorer"])


# --------------------------------------------------------------------------- registry and config
def test_missing_methods_are_reported_as_skipped(tiny_world: Path, tmp_path: Path) -> None:
    world = SyntheticWorld.open(tiny_world)
    cfg = load_evaluate_config(None, [f"world={tiny_world}", f"out={tmp_path}", "methods=ours,wo_teeth,stargan,psp",
                                      f"baselines.exprgan={tmp_path / 'nope.ckpt'}"])
    registry = build_methods(cfg, face_model=world.face_model())
    assert [m.name for m in registry.methods] == [INPUT_REFERENCE, TRUTH_REFERENCE]
    reasons = {s.name: s.reason for s in registry.skipped}
    assert reasons == {"ours": "no bundle configured", "w/o teeth": "no bundle configured",
                       "StarGAN": "no baselines.stargan checkpoint configured",
                       "pSp": "no baselines.psp_tgan checkpoint configured"}
    exprgan = build_methods(cfg, face_model=world.face_model(), names=["ExprGAN"])
    assert exprgan.skipped[0].reason.endswith("nope.ckpt not found")
    strict = load_evaluate_config(None, [f"world={tiny_world}", "strict=true", f"bundle={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="strict"):
        build_methods(strict, face_model=world.face_model(), names=["ours"])


def test_ours_and_ablations_run_the_video_editor(tiny_world: Path, tmp_path: Path) -> None:
    from tests.test_editor import tiny_parts

    world = SyntheticWorld.open(tiny_world)
    parts = tiny_parts(teeth=False)
    cfg = load_evaluate_config(None, [f"world={tiny_world}", "bundle=.", "methods=ours,wo_texture,wo_teeth"])
    registry = build_methods(cfg, face_model=world.face_model(), names=cfg.methods,
                             bundle_loader=lambda path, device: parts)
    assert [m.name for m in registry.methods] == ["ours", "w/o texture"] and registry.parts is parts
    assert registry.skipped[0].name == "w/o teeth" and "no teeth" in registry.skipped[0].reason
    assert registry.methods[1].options.edit_texture is False and registry.methods[0].options.use_classifier
    item = evaluation_items(world, "seen", max_items=1)[0]
    from emoedit.data.synthetic.truth_format import load_clip_truth
    from emoedit.video import probe_video

    landmarks = load_clip_truth(item.input_truth).landmarks
    out = tmp_path / "ours.mp4"
    details = registry.methods[0].produce(MethodInput(input_video=item.input_video, landmarks=landmarks,
                                                      emotion_code=item.emotion_code), out)
    assert probe_video(out).num_frames == probe_video(item.input_video).num_frames
    assert details["frames_with_face"] == 8 and details["texture_edit_mode"] == "classifier"


def test_method_names_and_config_errors(tiny_world: Path) -> None:
    assert canonical_method_name("wo_classifier") == "w/o classifier" == canonical_method_name("W/O Classifier")
    assert canonical_method_name("stargan") == "StarGAN" and canonical_method_name("truth") == TRUTH_REFERENCE
    with pytest.raises(ValueError, match="unknown method"):
        canonical_method_name("cyclegan")
    with pytest.raises(ConfigError, match="Did you mean: max_items"):
        load_evaluate_config(None, [f"world={tiny_world}", "max_item=3"])
    with pytest.raises(ConfigError, match="unknown method"):
        load_evaluate_config(None, [f"world={tiny_world}", "methods=ours,cyclegan"])
    with pytest.raises(ConfigError, match="world"):
        load_evaluate_config(None, ["max_items=3"])
    cfg = load_evaluate_config(None, [f"world={tiny_world}", "methods=[ours, StarGAN]", "sets=seen"])
    assert cfg.methods == ["ours", "StarGAN"] and cfg.sets == ["seen"]
    # Per-set item counts override max_items for their set only; a misspelled set or a count < 1 is an error.
    from emoedit.data.synthetic import SyntheticWorld
    from emoedit.evaluation.harness import set_items

    per_set = load_evaluate_config(None, [f"world={tiny_world}", "sets=seen,unseen_views", "max_items=3",
                                          "items_per_set={seen: 1}"])
    counts = {s: len(v) for s, v in set_items(SyntheticWorld.open(tiny_world), per_set).items()}
    assert counts["seen"] == 1 and counts["unseen_views"] == min(3, len(evaluation_items(
        SyntheticWorld.open(tiny_world), "unseen_views")))
    for bad in ("items_per_set={sen: 1}", "items_per_set.seen=0"):
        with pytest.raises(ConfigError, match="items_per_set"):
            load_evaluate_config(None, [f"world={tiny_world}", bad])
    mask = crop_paste_mask(20)
    assert mask.shape == (1, 1, 20, 20) and float(mask[0, 0, 10, 10]) == 1.0 and float(mask[0, 0, 0, 0]) < 0.05


def test_cli_handler_runs_and_reports_user_errors(tiny_world: Path, judges: dict[str, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from emoedit.cli import CliError
    from emoedit.evaluation.command import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--world", str(tiny_world), "--out", str(tmp_path / "cli"), "--sets", "seen",
                              "--max-items", "1", "--max-frames", "4", "--quiet", "--methods", "ours",
                              f"judges.emotion={judges['emotion']}", "monotonicity.enabled=false"])
    args.func(args)
    printed = capsys.readouterr().out
    assert "skipped ours: no bundle configured" in printed and "wrote" in printed
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["sets"]["seen"]["counts"] == {INPUT_REFERENCE: 1, TRUTH_REFERENCE: 1}
    rows = [json.loads(line) for line in (tmp_path / "cli" / ROWS_FILE).read_text().splitlines()]
    assert all(r["frames"] == 4 for r in rows)  # max_frames cuts the inputs
    with pytest.raises(CliError, match="--config FILE.yaml or --world"):
        args = parser.parse_args(["evaluate", "max_items=1"])
        args.func(args)
    with pytest.raises(CliError, match="unknown config key"):
        args = parser.parse_args(["evaluate", "--world", str(tiny_world), "max_itemz=1"])
        args.func(args)


def test_wandb_table_is_logged_offline(evaluated, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from emoedit.evaluation.harness import log_wandb

    logged: dict[str, Any] = {}
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_evaluate_config(None, [f"world={evaluated['cfg'].world}", f"out={tmp_path}", "wandb.enabled=true",
                                      "wandb.mode=offline"])
    original = wandb.init

    def spy(**kwargs: Any):
        run = original(**kwargs)
        log = run.log
        run.log = lambda payload, **kw: (logged.update(payload), log(payload, **kw))[1]
        return run

    monkeypatch.setattr(wandb, "init", spy)
    try:
        log_wandb(cfg, evaluated["first"].results)
    finally:
        wandb.teardown()  # wandb's process-wide singleton keeps this run's settings: later tests must not see them
    table = logged["evaluate/results"]
    assert isinstance(table, wandb.Table) and "emo_acc" in table.columns
    assert len(table.data) == 2 * 5  # sets × methods
    assert logged["evaluate/seen/ours/psnr"] == pytest.approx(PSNR_CAP_DB)
    assert "evaluate/seen/psnr" not in logged  # two non-reference methods: no sweep key
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # the offline run folder, under the output folder


def test_face_box_keeps_masked_psnr_and_ssim_exact() -> None:
    from emoedit.evaluation.scoring import face_box
    from emoedit.metrics.image_quality import masked_psnr, masked_ssim

    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 48, 40), torch.rand(2, 3, 48, 40)
    mask = torch.zeros(2, 1, 48, 40, dtype=torch.bool)
    mask[0, :, 14:30, 9:25] = True
    mask[1, :, 18:33, 12:20] = True
    rows, cols = face_box(mask)
    assert (rows, cols) == (slice(9, 38), slice(4, 30))
    for metric in (masked_psnr, masked_ssim):
        full = metric(a, b, mask)
        boxed = metric(a[..., rows, cols], b[..., rows, cols], mask[..., rows, cols])
        assert torch.allclose(full, boxed, rtol=1e-12, atol=1e-12), metric.__name__
    assert face_box(torch.zeros(1, 1, 20, 20, dtype=torch.bool)) == (slice(0, 20), slice(0, 20))


def test_retrained_judge_refuses_to_resume_but_a_new_baseline_may_join(evaluated, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(evaluated["out"], out)
    cfg = evaluated["cfg"]
    base = [f"world={cfg.world}", f"out={out}", "sets=seen,unseen_views", "max_items=2", "progress=false",
            f"judges.identity={cfg.judges.identity}", "monotonicity.enabled=false"]
    judge = tmp_path / "emotion.ckpt"
    shutil.copyfile(cfg.judges.emotion, judge)
    stargan = tmp_path / "stargan.ckpt"
    stargan.write_bytes(b"not yet trained")
    same = load_evaluate_config(None, base + [f"judges.emotion={cfg.judges.emotion}", f"baselines.stargan={stargan}"])
    again = run_evaluation(same, registry=evaluated["registry"], scorer=evaluated["scorer"])  # a baseline joins
    assert again.scored == 0
    state = json.loads((out / "evaluation_state.json").read_text())
    assert state["files"]["baselines.stargan"] is not None and state["baselines"]["stargan"] == str(stargan)
    stargan.write_bytes(b"retrained")
    with pytest.raises(ValueError, match="contents of baselines.stargan"):
        run_evaluation(same, registry=evaluated["registry"], scorer=evaluated["scorer"])
    moved = load_evaluate_config(None, base + [f"judges.emotion={judge}"])
    with pytest.raises(ValueError, match="judges"):  # another judge file, even with the same bytes
        run_evaluation(moved, registry=evaluated["registry"], scorer=evaluated["scorer"])


def test_a_trained_stargan_checkpoint_becomes_a_crop_baseline(tiny_world: Path, tmp_path: Path) -> None:
    from emoedit.baselines.crop_editor import StarGANEditor, save_generator
    from emoedit.data.synthetic.truth_format import load_clip_truth
    from emoedit.networks.stargan import StarGANGenerator
    from emoedit.video import read_video

    path = save_generator(StarGANGenerator(conv_dim=4, num_down=1, num_res_blocks=1), tmp_path / "stargan.pt",
                          part="stargan", resolution=16)
    world = SyntheticWorld.open(tiny_world)
    cfg = load_evaluate_config(None, [f"world={tiny_world}", f"baselines.stargan={path}", "methods=StarGAN"])
    registry = build_methods(cfg, face_model=world.face_model(), names=cfg.methods)
    (method,) = registry.methods
    assert isinstance(method, CropBaselineMethod) and isinstance(method.editor, StarGANEditor)
    assert method.crop_size == 16 and method.continuous and "StarGANEditor on 16²" in method.describe()
    item = evaluation_items(world, "seen", max_items=1)[0]
    frames, _ = read_video(item.input_video, as_tensor=True)
    frames = frames[:3].permute(0, 3, 1, 2).float() / 255.0
    edited = method.edit_frames(frames, load_clip_truth(item.input_truth).landmarks[:3], item.emotion_code)
    assert edited.shape == frames.shape and bool(((edited >= 0) & (edited <= 1)).all())
    assert torch.equal(edited[..., :1, :1], frames[..., :1, :1])  # outside the crop: untouched


class FailingMethod(EvaluationMethod):
    """A method whose every edit fails (e.g. no face found)."""

    name, kind = "w/o texture", "ablation"

    def produce(self, source: MethodInput, out_path: Path) -> dict[str, Any]:
        raise ValueError(f"{source.input_video}: no usable face")


def test_a_failing_method_is_reported_and_retried_not_faked(evaluated, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(evaluated["out"], out)
    cfg = evaluated["cfg"]
    args = [f"world={cfg.world}", f"out={out}", f"judges.emotion={cfg.judges.emotion}",
            f"judges.identity={cfg.judges.identity}", "sets=seen", "max_items=2", "monotonicity.enabled=false",
            "progress=false"]
    registry = MethodRegistry(methods=[*evaluated["registry"].methods, FailingMethod()])
    result = run_evaluation(load_evaluate_config(None, args), registry=registry, scorer=evaluated["scorer"])
    assert result.scored == 0 and len(result.results["failures"]) == 2
    assert result.results["failures"][0]["error"].startswith("ValueError:") and "no usable face" in \
        result.results["failures"][0]["error"]
    assert "w/o texture" not in result.summary("seen") and any("could not be made" in n for n in result.results["notes"])
    with pytest.raises(ValueError, match="no usable face"):
        run_evaluation(load_evaluate_config(None, args + ["strict=true"]), registry=registry,
                       scorer=evaluated["scorer"])


# --------------------------------------------------------------------------- fitter re-reconstruction
def _fitter_config(world: Path, out: Path, *extra: str):
    return load_evaluate_config(None, [f"world={world}", f"out={out}", "sets=seen", "max_items=1",
                                       "monotonicity.enabled=false", "progress=false", "rereconstruct=fitter",
                                       "refit_steps=10", "refit_render_size=32", *extra])


def test_fitter_rereconstruction_needs_no_regressor_and_is_recorded(
        tiny_world: Path, tmp_path: Path) -> None:
    world = SyntheticWorld.open(tiny_world)
    cfg = _fitter_config(tiny_world, tmp_path)
    scorer = build_scorer(cfg, world)  # no bundle, no recon_checkpoint
    assert scorer.reconstructor is None and scorer.refitter is not None and scorer.geometry
    assert scorer.refitter.render_size == 32 and scorer.refitter.camera == world.camera  # whole frames, no crop
    assert not any("reconstructor" in n for n in scorer.notes)
    registry = MethodRegistry(methods=[CopyMethod("ours", "truth"), ReferenceMethod(name=INPUT_REFERENCE),
                                       ReferenceMethod(name=TRUTH_REFERENCE)], skipped=[])
    result = run_evaluation(cfg, registry=registry, scorer=scorer)
    summary = result.summary("seen")
    inputs, truth, ours = summary[INPUT_REFERENCE], summary[TRUTH_REFERENCE], summary["ours"]
    for key in ("exp_err", "vertex_mm", "lip_mm", "lm_jitter"):
        assert inputs[key] is not None and math.isfinite(inputs[key]), key
        assert ours[key] == pytest.approx(truth[key]), key  # the same pixels, the same start: the same fit
    assert inputs["lip_mm"] == pytest.approx(0.0, abs=1e-9) and truth["lm_jitter"] == pytest.approx(1.0)
    assert truth["exp_err"] != inputs["exp_err"]  # the truth's pixels move the fit (its ranking on 64-px frames:
    # not asserted — see tests/test_metrics_refit.py for the known-answer ranking on exactly rendered frames)
    block = result.results["rereconstruction"]
    assert (block["mode"], block["steps"], block["render_size"]) == ("fitter", 10, 32)
    tables = result.tables_path.read_text(encoding="utf-8")
    assert ("Expression / vertex / lip-opening / landmark-jitter columns: photometric re-fit of the whole frames "
            "(FaceFitter photometric stage, 10 steps, render 32 px") in tables
    assert "from the input's true coefficients, identity and albedo fixed" in tables
    for change, name in (("refit_steps=12", "refit_steps"), ("rereconstruct=regressor", "rereconstruct")):
        changed = _fitter_config(tiny_world, tmp_path, change)
        with pytest.raises(ValueError, match=name):  # rows scored another way: refused
            run_evaluation(changed, registry=registry, scorer=scorer)


def test_rereconstruction_settings_in_the_state_fingerprint(tiny_world: Path, tmp_path: Path) -> None:
    from emoedit.evaluation.harness import STATE_FILE, _check_state

    base = [f"world={tiny_world}", f"out={tmp_path}"]
    _check_state(tmp_path, load_evaluate_config(None, base))  # regressor (the default)
    _check_state(tmp_path, load_evaluate_config(None, base + ["refit_steps=7"]))  # unused by the regressor: fine
    with pytest.raises(ValueError, match="rereconstruct"):
        _check_state(tmp_path, load_evaluate_config(None, base + ["rereconstruct=fitter"]))
    state_path = tmp_path / STATE_FILE
    state = json.loads(state_path.read_text())
    for key in ("rereconstruct", "refit_steps", "refit_render_size"):  # a state written before these keys existed
        del state[key]
    state_path.write_text(json.dumps(state))
    _check_state(tmp_path, load_evaluate_config(None, base))  # it was a regressor run: resumes
    assert json.loads(state_path.read_text())["rereconstruct"] == "regressor"
    fitter = tmp_path / "fitter"
    _check_state(fitter, load_evaluate_config(None, [f"world={tiny_world}", f"out={fitter}", "rereconstruct=fitter"]))
    with pytest.raises(ValueError, match="refit_render_size"):
        _check_state(fitter, load_evaluate_config(None, [f"world={tiny_world}", f"out={fitter}",
                                                         "rereconstruct=fitter", "refit_render_size=96"]))


def test_rereconstruct_config_values(tiny_world: Path) -> None:
    cfg = load_evaluate_config(None, [f"world={tiny_world}"])
    assert (cfg.rereconstruct, cfg.refit_steps, cfg.refit_render_size) == ("regressor", 40, 64)
    with pytest.raises(ConfigError, match=r"rereconstruct must be one of \['regressor', 'fitter'\], got 'fiter'"):
        load_evaluate_config(None, [f"world={tiny_world}", "rereconstruct=fiter"])
    with pytest.raises(ConfigError, match="refit_steps must be >= 1"):
        load_evaluate_config(None, [f"world={tiny_world}", "refit_steps=0"])
    with pytest.raises(ConfigError, match="refit_render_size must be >= 8"):
        load_evaluate_config(None, [f"world={tiny_world}", "refit_render_size=4"])
