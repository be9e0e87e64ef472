"""Registers the `slow` marker: slow tests run only with --runslow or FLAM_RUN_SLOW=1."""

import os

import pytest


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="also run tests marked slow (or set FLAM_RUN_SLOW=1)")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end runs of minutes; need --runslow or "
                          "FLAM_RUN_SLOW=1")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow") or os.environ.get("FLAM_RUN_SLOW", "") not in ("", "0"):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow or FLAM_RUN_SLOW=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
