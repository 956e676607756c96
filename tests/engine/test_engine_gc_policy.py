"""The engine makes full garbage collections rare (pipeline/gc_policy.py) and never lowers a
threshold set higher."""

from __future__ import annotations

import gc

from agent.config import load_config
from agent.pipeline import gc_policy
from agent.pipeline.engine import Engine


def test_engine_sets_a_rare_full_collection_and_keeps_the_young_ones(tmp_path):
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)                 # CPython's defaults
        Engine(load_config(None, {}), lambda finished: None, workdir=tmp_path).close()
        assert gc.get_threshold() == (700, 10, gc_policy.FULL_THRESHOLD)
        gc.set_threshold(500, 5, 5000)                # someone chose rarer still: kept
        gc_policy.for_engine()
        assert gc.get_threshold() == (500, 5, 5000)
    finally:
        gc.set_threshold(*saved)
