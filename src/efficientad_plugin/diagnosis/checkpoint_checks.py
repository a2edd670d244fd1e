"""Model checks that read the checkpoint alone: training budget, learning-rate decay, teacher, fitted statistics."""

from __future__ import annotations

import math
from typing import Any

from ..post_processing import images_needed
from ..schedules import paper_decay_step
from ..teacher_weights import UNTRAINED, is_paper_teacher
from .findings import Section, Severity

PAPER_STEPS = 70_000  # the paper trains 70,000 steps at batch 1
FEW_STEPS = 10_000  # below this the student and autoencoder are far from converged (near chance in our runs)
_QUANTILES = {"local (student-teacher)": "model.anomaly_map_generator.st_quantiles",
              "global (autoencoder)": "model.anomaly_map_generator.ae_quantiles"}


def check_training(section: Section, checkpoint: dict[str, Any]) -> None:
    """Steps trained against ``max_steps`` and the paper's 70,000, and whether the learning rate dropped."""
    hyper_parameters = checkpoint.get("hyper_parameters", {})
    steps, max_steps = int(checkpoint.get("global_step", 0)), int(hyper_parameters.get("max_steps", PAPER_STEPS))
    decay_step = paper_decay_step(max_steps)  # with the paper's schedule, later steps use lr x 0.1
    decayed = steps > decay_step
    schedule = str(hyper_parameters.get("lr_schedule", "paper"))
    section.facts["training"] = {"steps": steps, "max_steps": max_steps, "paper_steps": PAPER_STEPS,
                                 "lr_schedule": schedule, "lr_decay_step": decay_step, "lr_decayed": decayed}
    if steps < max_steps:
        section.add(Severity.WARNING, "interrupted run",
                    f"The checkpoint has {steps:,} of its {max_steps:,} steps: the run stopped early.",
                    "Resume it: anomalib train ... --ckpt_path <run>/weights/lightning/last_step.ckpt.")
    if steps < PAPER_STEPS and schedule == "one_cycle":  # the fast preset: a short budget by design
        section.add(Severity.WARNING, "training budget",
                    f"Trained {steps:,} steps with the one-cycle schedule (the fast preset), {steps / PAPER_STEPS:.1%} "
                    f"of the paper's {PAPER_STEPS:,}: accuracy trades against time (docs/benchmarks.md, convergence).",
                    "Where accuracy falls short, train longer: a larger --model.max_steps, or the paper's recipe.")
    elif steps < PAPER_STEPS:
        severity = Severity.ERROR if steps < FEW_STEPS else Severity.WARNING
        section.add(severity, "training budget",
                    f"Trained {steps:,} steps, {steps / PAPER_STEPS:.1%} of the paper's {PAPER_STEPS:,}: the "
                    f"student and autoencoder are not converged, and the autoencoder learns slowest.",
                    f"Train with --model.max_steps {PAPER_STEPS}.")
    if schedule == "paper" and not decayed:  # one_cycle decays all along its cosine
        section.add(Severity.WARNING, "learning-rate decay",
                    f"No step trained at the lowered learning rate (x0.1 after step {decay_step:,}, 95 % of "
                    f"max_steps): the paper's last 5 % of steps at the lower rate settle student and autoencoder.",
                    "Let the run finish (or resume it) so that it passes the decay step.")


def check_teacher(section: Section, checkpoint: dict[str, Any]) -> None:
    """Which teacher the run used, and whether it trained with the pretraining penalty."""
    hyper_parameters = checkpoint.get("hyper_parameters", {})
    teacher = str(hyper_parameters.get("teacher_weights", "DEFAULT"))
    model_size = str(hyper_parameters.get("model_size", "small"))
    penalty = hyper_parameters.get("penalty_dir", "bundled")
    section.facts["teacher"] = {"teacher_weights": teacher, "model_size": model_size,
                                "penalty_dir": None if penalty is None else str(penalty)}
    try:
        paper = is_paper_teacher(teacher, model_size)
    except (FileNotFoundError, ValueError):
        paper = False  # a teacher file that has moved since training: not a known entry either way
    if teacher == UNTRAINED:
        section.add(Severity.ERROR, "teacher", "The teacher is random (teacher_weights='untrained').",
                    "Train with --model.teacher_weights DEFAULT (the paper's teacher) or a distilled .pth.")
    elif not paper:
        section.add(Severity.WARNING, "teacher",
                    f"The teacher is {teacher}, not the paper's (distilled from WideResNet-101-2 on ImageNet); "
                    f"every feature the student learns comes from it.",
                    "Train with --model.teacher_weights DEFAULT, or probe teachers first with "
                    "tools/probe_features.py (docs/teachers.md).")
    if penalty is None:
        section.add(Severity.WARNING, "penalty",
                    "Trained without the pretraining penalty (penalty_dir None), which costs accuracy, most of all "
                    "on logical anomalies.", "Pass --model.penalty_dir with a folder of ImageNet/Imagenette images.")


def check_thresholds(section: Section, checkpoint: dict[str, Any]) -> None:
    """How the thresholds were set: a false-alarm rate from normal images (with its interval) or F1-adaptive."""
    state = checkpoint["state_dict"]
    rate = state.get("post_processor.fitted_false_alarm_rate")
    if rate is None or rate.isnan():
        section.facts["thresholds"] = {"mode": "f1_adaptive (anomalib)"}
        return
    normal = int(state["post_processor.normal_images"])
    low, high = (float(value) for value in state["post_processor.false_alarm_interval"])
    section.facts["thresholds"] = {"mode": "false_alarm_rate", "false_alarm_rate": float(rate),
                                   "normal_images": normal, "false_alarm_interval_95": [low, high]}
    if normal < images_needed(float(rate)):
        section.add(Severity.WARNING, "thresholds",
                    f"The threshold targets a {100 * float(rate):.2g} % false-alarm rate from {normal} normal "
                    f"validation images: the true rate lies anywhere in [{100 * low:.2g} %, {100 * high:.2g} %].",
                    f"Validate on at least {images_needed(float(rate))} normal images (a larger val_split_ratio or "
                    f"more normal images), or choose a higher false_alarm_rate.")


def check_statistics(section: Section, checkpoint: dict[str, Any]) -> None:
    """The fitted map quantiles q_a (-> 0) and q_b (-> 0.1) of each branch, and the teacher's statistics."""
    state = checkpoint["state_dict"]
    quantiles = {name: [float(value) for value in state[key]] for name, key in _QUANTILES.items() if key in state}
    section.facts["quantiles"] = {name: {"q_a (0.9)": values[0], "q_b (0.995)": values[1]}
                                  for name, values in quantiles.items()}
    threshold = state.get("post_processor._image_threshold")
    section.facts["image_threshold"] = None if threshold is None or threshold.isnan() else float(threshold)
    unfitted = [name for name, values in quantiles.items() if any(math.isnan(value) for value in values)]
    teacher_mean = state.get("model.teacher_mean")
    if unfitted or len(quantiles) < len(_QUANTILES) or teacher_mean is None or teacher_mean.isnan().any():
        section.add(Severity.ERROR, "normalisation",
                    "The checkpoint's map quantiles or teacher statistics were never fitted.",
                    "Use the model.ckpt written at the end of training, not one saved before its validation.")
