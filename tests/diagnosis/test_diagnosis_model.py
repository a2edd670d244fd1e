"""Model checks of the diagnosis report on a checkpoint trained 1 step, and the HTML/JSON report itself."""

from __future__ import annotations

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from efficientad_plugin.diagnosis import Diagnosis, Section, Severity, diagnose
from efficientad_plugin.diagnosis.checkpoint_checks import check_statistics, check_teacher, check_training
from efficientad_plugin.diagnosis.dataset import mvtec_dataset
from efficientad_plugin.diagnosis.score_checks import border_shares
from efficientad_plugin.diagnosis.scoring import load_checkpoint, model_from_checkpoint, score_images
from efficientad_plugin.images import read_rgb


@pytest.fixture(scope="module")
def diagnosis(trained_checkpoint: tuple[Path, Path]) -> Diagnosis:
    category, checkpoint = trained_checkpoint
    return diagnose(category, checkpoint, max_train_images=2)  # 2 of the 5 training images: a shorter test


def test_checkpoint_facts_and_findings(diagnosis: Diagnosis, teacher_file: Path) -> None:
    model = diagnosis.sections[1]
    assert model.facts["training"]["steps"] == 1 and model.facts["training"]["max_steps"] == 1
    assert model.facts["training"]["lr_decayed"] is False  # lowered after step int(0.95 * 1) = 1: never used
    assert model.facts["teacher"] == {"teacher_weights": str(teacher_file), "model_size": "small", "penalty_dir": None}
    for quantiles in model.facts["quantiles"].values():
        assert 0 < quantiles["q_a (0.9)"] < quantiles["q_b (0.995)"]
    checks = {finding.check: finding.severity for finding in model.findings}
    assert checks["training budget"] == Severity.ERROR
    assert checks["teacher"] == Severity.WARNING and checks["penalty"] == Severity.WARNING
    assert "normalisation" not in checks
    # one normal validation image: a 1 % false-alarm threshold, and a warning that says it needs 300
    thresholds = model.facts["thresholds"]
    assert thresholds["mode"] == "false_alarm_rate" and thresholds["normal_images"] == 1
    assert checks["thresholds"] == Severity.WARNING
    assert any("300 normal images" in finding.suggestion for finding in model.findings if finding.check == "thresholds")


def test_scores_maps_and_galleries(diagnosis: Diagnosis) -> None:
    facts = diagnosis.sections[1].facts
    assert {name: group["images"] for name, group in facts["scores"].items()} == {
        "train": 2, "test good": 2, "test defect": 2}
    row = facts["maps_per_defect_type"]["defect"]
    assert row["images"] == 2 and 0.0 <= row["local_share"] <= 1.0
    assert {"auroc_combined", "auroc_local", "auroc_global"} <= set(row)
    overall = facts["maps_overall"]  # all test images: each map alone, the paper's average, the model's weighting
    for branch in ("local", "global", "paper"):
        for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
            assert 0.0 <= overall[f"{branch}_{metric}"] <= 1.0
    chosen = {(1.0, 0.0): "local", (0.5, 0.5): "paper", (0.0, 1.0): "global"}[tuple(overall["model_weights"])]
    assert overall["model_image_AUROC"] == pytest.approx(overall[f"{chosen}_image_AUROC"])  # the model is that map
    assert len(facts["worst_false_positives"]) == 2 and len(facts["worst_false_negatives"]) == 2
    assert 0.0 <= facts["border"]["anomaly_mass_share"] <= 1.0
    captions = [figure.caption for figure in diagnosis.sections[1].figures]
    assert captions[0].startswith("Image scores") and any("false positives" in c for c in captions)
    assert any("false negatives" in caption for caption in captions)


def test_local_and_global_parts_add_up_to_the_models_map(trained_checkpoint: tuple[Path, Path]) -> None:
    category, checkpoint = trained_checkpoint
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    image = mvtec_dataset(category).split("test", 1)[0]
    [scored] = score_images(model, [image])
    with torch.no_grad():
        resized = F.interpolate(read_rgb(image.path)[None], size=model.image_size, mode="bilinear", antialias=True)
        expected = model(resized).anomaly_map[0, 0].numpy()
    np.testing.assert_allclose(scored.anomaly_map, expected, rtol=1e-5, atol=1e-6)
    assert scored.score == pytest.approx(float(expected.max()), rel=1e-5)
    # with the global map weighted out, the model's map is the local map alone, and the report's map follows
    model.anomaly_map_generator.set_branch_weights(1.0, 0.0)
    [local_only] = score_images(model, [image])
    with torch.no_grad():
        expected = model(resized).anomaly_map[0, 0].numpy()
    np.testing.assert_allclose(local_only.anomaly_map, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(local_only.local_map, scored.local_map)  # each map alone does not depend on weights
    assert local_only.local_share == 1.0


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_html_parses_with_embedded_images_and_json_matches(diagnosis: Diagnosis, tmp_path: Path) -> None:
    page, summary_file = diagnosis.write(tmp_path / "report")
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    figures = [figure for section in diagnosis.sections for figure in section.figures]
    assert len(parser.sources) == len(figures) >= 4  # defect sizes, scores, two galleries
    for source, figure in zip(parser.sources, figures, strict=True):
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        assert base64.b64decode(source[len(prefix):]) == figure.png
    assert "training budget" in " ".join(parser.text)
    summary = json.loads(summary_file.read_text())
    assert summary["findings"][0]["severity"] == "error"
    assert summary["severity_counts"]["error"] == sum(f.severity == Severity.ERROR for f in diagnosis.findings)
    assert summary["facts"]["Model"]["training"]["steps"] == 1


def test_training_budget_decay_and_unfitted_statistics_from_checkpoint_contents() -> None:
    nan = torch.tensor([math.nan, math.nan])
    checkpoint = {
        "global_step": 60_000, "hyper_parameters": {"max_steps": 70_000, "teacher_weights": "DEFAULT"},
        "state_dict": {"model.anomaly_map_generator.st_quantiles": nan, "model.anomaly_map_generator.ae_quantiles": nan,
                       "model.teacher_mean": torch.zeros(1, 384, 1, 1)},
    }
    section = Section("Model")
    for check in (check_training, check_teacher, check_statistics):
        check(section, checkpoint)
    checks = {finding.check: finding.severity for finding in section.findings}
    assert checks == {"interrupted run": Severity.WARNING, "training budget": Severity.WARNING,
                      "learning-rate decay": Severity.WARNING, "normalisation": Severity.ERROR}  # paper teacher: fine
    checkpoint["global_step"] = 70_000
    checkpoint["hyper_parameters"]["teacher_weights"] = "untrained"
    section = Section("Model")
    check_training(section, checkpoint)
    check_teacher(section, checkpoint)
    assert section.facts["training"]["lr_decayed"] is True
    assert [(finding.check, finding.severity) for finding in section.findings] == [("teacher", Severity.ERROR)]
    # a one-cycle run decays all along: no step-decay warning before 95 % of its steps
    checkpoint["global_step"] = 1_000
    checkpoint["hyper_parameters"].update(max_steps=1_500, lr_schedule="one_cycle")
    section = Section("Model")
    check_training(section, checkpoint)
    assert section.facts["training"]["lr_schedule"] == "one_cycle"
    checks = {finding.check: finding.severity for finding in section.findings}
    assert "learning-rate decay" not in checks
    assert checks["training budget"] == Severity.WARNING  # short by design, not the paper recipe cut short


def test_border_shares_find_mass_at_the_edges() -> None:
    maps = np.full((3, 100, 100), -0.05, dtype=np.float32)  # below q_a everywhere ...
    maps[:, 40:60, 40:60] = 0.02  # ... but a faint centre
    mass, area, maxima = border_shares(maps, band=0.1)
    assert area == pytest.approx(0.36) and mass == 0.0 and maxima == 0.0
    maps[:, :, :5] = 0.2  # a bright left edge
    mass, _, maxima = border_shares(maps, band=0.1)
    assert mass == pytest.approx(0.2 * 500 / (0.2 * 500 + 0.02 * 400)) and maxima == 1.0
