"""Measuring generated images: the Shapes World detector and GenEval-style adherence scores."""

from latentdiff.evaluation.detector import DetectedObject, Detection, detect
from latentdiff.evaluation.scoring import CATEGORIES, Report, score, score_image
from latentdiff.evaluation.suite import evaluation_suite

__all__ = [
    "CATEGORIES",
    "DetectedObject",
    "Detection",
    "Report",
    "detect",
    "evaluation_suite",
    "score",
    "score_image",
]
