"""Shared test settings: one thread by default (tiny models gain nothing from more; CI has 2 cores), deterministic seeds, hypothesis profile."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("QGEOM_TEST_THREADS", "1")))
settings.register_profile("qgeom", deadline=None, max_examples=30,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("qgeom")
