"""Scoring: normalisers, answer matching, WER, statistics and the built-in scorers.

Importing this package is cheap; Whisper's normaliser (and torch) load on first use.
"""
from deeptalk_eval.scoring.base import SampleView, ScoringContext, get_scorer, register_scorer, scorer_names

__all__ = ["SampleView", "ScoringContext", "get_scorer", "register_scorer", "scorer_names"]
