"""Learning curves on the toy of tests/test_learning.py, trained longer than the test can.

The toy's next frame depends on hidden per-entity moves, so a model that ignores its
actions plateaus at "the entity left its cell" (accuracy 0.875 at step 1; copy 0.755);
curves of accuracy, free-running accuracy, action gain and perplexity tell whether a
model merely needs more steps or does not learn to use its actions. One line per
evaluation, JSON lines in --out:

    python benchmarks/learning_curve.py --runs=flam,flam:aggregator_parallel=True \
        --steps=6000 --eval_every=1000 --out=/tmp/curves.jsonl

A run is `variant[:lam_key=value[:...]]` (values parsed as Python literals).
"""

import ast
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.test_learning import train_toy  # pylint: disable=g-import-not-at-top

_RUNS = flags.DEFINE_list("runs", ["flam"], "variant[:lam_key=value...] per run.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 500, "Steps between evaluations.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every run.")
_OUT = flags.DEFINE_string("out", "", "Optional JSON-lines file.")

_SHOWN = ("accuracy_step1", "free_running_accuracy_step1", "copy_accuracy_step1",
          "action_gain", "action_gain_accuracy", "action_perplexity",
          "action_perplexity_per_slot")


def parse_run(spec: str):
  variant, *pairs = spec.split(":")
  overrides = {}
  for pair in pairs:
    key, value = pair.split("=", 1)
    overrides[key] = ast.literal_eval(value)
  return variant, overrides


def main(argv):
  del argv
  for spec in _RUNS.value:
    variant, overrides = parse_run(spec)
    start = time.time()
    history = train_toy(variant, _STEPS.value, seed=_SEED.value, eval_every=_EVAL_EVERY.value,
                        **overrides)
    seconds = time.time() - start
    for point in history:
      point = {"run": spec, "seconds_total": round(seconds, 1), **point}
      print(spec, point["step"], {k: round(point[k], 3) for k in _SHOWN if k in point},
            flush=True)
      if _OUT.value:
        with open(_OUT.value, "a") as f:
          f.write(json.dumps(point) + "\n")


if __name__ == "__main__":
  app.run(main)
