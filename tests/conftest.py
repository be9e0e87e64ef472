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
    # The minutes-long tests first, so that with pytest-xdist the short ones fill the
    # workers at the end instead of one worker finishing a long run alone.
    items.sort(key=lambda item: "slow" not in item.keywords)  # Stable: file order kept.
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow or FLAM_RUN_SLOW=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
