"""Registers the `slow` marker (slow tests run only with --runslow or FLAM_RUN_SLOW=1) and
gives the test session one persistent JAX compilation cache for the scripts it runs."""

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


@pytest.fixture(scope="session")
def jax_cache(request, tmp_path_factory):
  """A persistent compilation cache: pytest's cache folder (kept between sessions), or tmp."""
  cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider.
  if cache is not None:
    return str(cache.mkdir("flam_jax_compilation_cache"))
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session", autouse=True)
def subprocesses_share_compiled_programs(jax_cache):
  """Every train.py / experiments/*.py process a test starts reads and writes `jax_cache`
  ($JAX_COMPILATION_CACHE_DIR), so a program compiled by one (a tiny tokenizer or world
  model step, an evaluation) is loaded by the next: the end-to-end tests spend most of their
  time compiling the same tiny programs. The test process itself compiles as before (its
  JAX was configured at import)."""
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", jax_cache)
