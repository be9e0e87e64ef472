"""Evaluation from the command line, and train.py's `eval` stage.

    python train.py --config=<same config> --workdir=W --config.stage=eval
    flam-eval --workdir=W [--steps=2000,4000] [--workdirs=W2,W3]
    python -m flam_jax.evaluate --workdir=W ...      (the same)

Loads the run(s) (`flam_jax.lib.loading`), evaluates them on a split with
`flam_jax.lib.evaluator` (one jit-compiled vmap for several checkpoints or seeds),
prints a markdown table and writes <workdir>/eval/metrics.json. Metric definitions:
`flam_jax/lib/eval_step.py`, `flam_jax/lib/probe.py`, `flam_jax/lib/metrics.py`.

Datasets without ground truth (imported action-free video) are evaluated too: the
metrics that need the missing masks or actions are skipped, listed with the reason
under "skipped" in metrics.json and below the table. wm cannot run without actions.
"""

import os
from typing import Any, Dict, List, Optional, Sequence

import jax
from ml_collections import ConfigDict

from flam_jax import cli, filesystem
from flam_jax.data import pipeline
from flam_jax.errors import ConfigError
from flam_jax.lib import eval_step, loading, sharding
from flam_jax.lib.evaluator import (EVAL_DEFAULTS, Evaluator, dataset_batches, dataset_fields,
                                    eval_settings)



def _split_list(value) -> List[str]:
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [s.strip() for s in str(value or "").split(",") if s.strip()]


def _load_runs(workdir: str, settings: Dict[str, Any]):
  """[(workdir, step, stage, params)] for the latest or listed steps of each workdir."""
  runs = []
  try:
    steps = [int(s) for s in _split_list(settings["steps"])] or [None]
  except ValueError as e:
    raise ConfigError(f"config.eval.steps={settings['steps']!r} is not a comma-separated list "
                      "of checkpoint steps, e.g. '2000,4000'") from e
  workdirs = [workdir] + _split_list(settings["workdirs"])
  for wd in workdirs:
    for step in steps:
      stage, params, real_step = loading.load_trained(
          wd, step, init_slot_iterations=int(settings["init_slot_iterations"]))
      runs.append((os.path.abspath(wd), int(real_step), stage, params))
  spec = eval_step.EvalSpec.from_stage(runs[0][2])
  for wd, step, stage, _ in runs[1:]:
    if eval_step.EvalSpec.from_stage(stage) != spec:
      raise ConfigError(f"{wd} step {step} has another model config than {runs[0][0]}; a sweep "
                        "evaluates checkpoints or seeds of one config only")
  return runs


SKIPPED_KEYS = dict(ari_fg="ari_fg", disentanglement="disentanglement",
                    probe_accuracy="probe", probe_majority="probe",
                    probe_accuracy_given_heading="probe", bound_fraction="disentanglement",
                    probe_accuracy_given_heading_bound="probe")  # Table key -> skipped key.


def format_table(results: Sequence[Dict[str, Any]], names: Sequence[str]) -> str:
  """A markdown table: one row per metric (per rollout step t for the per-step ones).

  Metrics skipped for missing ground truth read "skipped", and one line per skipped
  metric below the table says why.
  """
  skipped = results[0].get("skipped") or {}
  def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"
  rows = [("windows", [str(r["num_windows"]) for r in results])]
  p = results[0]["prediction_steps"]
  labels = dict(psnr_t="PSNR", ssim_t="SSIM", delta_psnr_t="Delta PSNR",
                psnr_random_t="PSNR (random actions)", token_accuracy_t="token accuracy",
                copy_psnr_t="PSNR of copy (no change)",
                copy_token_accuracy_t="token accuracy of copy")
  for key, label in labels.items():
    for t in range(p):
      rows.append((f"{label} t={t + 1}",
                   [fmt(r[key][t] if r[key] is not None else None) for r in results]))
  for key, label in [("psnr_mean", "PSNR mean over t"), ("delta_psnr_mean", "Delta PSNR mean"),
                     ("tokenizer_psnr", "tokenizer PSNR (ceiling)"),
                     ("action_perplexity", "latent action perplexity (codes in use)"),
                     ("action_perplexity_per_slot", "latent action perplexity per slot"),
                     ("ari_fg", "ARI-FG"),
                     ("disentanglement", "slot-agent disentanglement"),
                     ("probe_accuracy", "probe accuracy"), ("probe_majority", "probe majority"),
                     ("bound_fraction", "agents bound to their slot"),
                     ("probe_accuracy_given_heading", "probe accuracy given the heading"),
                     ("probe_accuracy_given_heading_bound",
                      "probe accuracy given the heading, bound agents")]:
    if SKIPPED_KEYS.get(key) in skipped:
      rows.append((label, ["skipped"] * len(results)))
    else:
      rows.append((label, [fmt(r.get(key)) for r in results]))
  lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
  if results[0].get("starts", "first") != "first":
    lines.append(f"\nRollouts from start frames: {results[0]['starts']} (eval.starts).")
  if results[0].get("init_slot_iterations"):
    lines.append(f"\nFrame 0's slot-attention iterations: {results[0]['init_slot_iterations']} "
                 "(eval.init_slot_iterations; the run's own count otherwise).")
  if skipped:
    lines.append("")
  lines += [f"skipped {metric}: {why}" for metric, why in skipped.items()]
  return "\n".join(lines)


def evaluate_workdir(workdir: str, settings: Dict[str, Any],
                     run_config: Optional[ConfigDict] = None) -> Dict[str, Any]:
  """Evaluates the run(s) named by `settings` and writes <workdir>/eval/metrics.json."""
  sharding.maybe_initialize_distributed()
  runs = _load_runs(workdir, settings)
  stage = runs[0][2]
  config = stage.config
  data_dir = ""
  if run_config is not None and run_config.data.dir and os.path.isdir(run_config.data.dir):
    data_dir = run_config.data.dir
  data_dir = data_dir or config.data.dir
  window_length = config.data.window_length
  meta = pipeline.load_metadata(data_dir)
  fields = dataset_fields(meta)
  mesh_config = run_config if run_config is not None else config
  mesh = sharding.make_mesh(mesh_config.mesh.model_axis_size)
  evaluator = Evaluator(stage, mesh, seed=int(settings["seed"]),
                        probe_steps=int(settings["probe_steps"]), starts=str(settings["starts"]))
  eval_step.skipped_metrics(evaluator.spec, fields)  # wm without actions: refused up front.
  # Agents matter only to the ground truth; action-free video has none to compare.
  pipeline.validate(meta, image_size=config.data.image_size, window_length=window_length,
                    num_agents=stage.num_agents if len(fields) > 1 else None)
  batch_size = int(settings["batch_size"] or mesh_config.batch_size)
  stride = int(settings["window_stride"] or config.data.window_stride)
  batches = dataset_batches(data_dir, settings["split"], window_length=window_length,
                            batch_size=batch_size, window_stride=stride,
                            max_batches=int(settings["max_batches"]), mesh=mesh)
  if len(runs) == 1:
    results = [evaluator.evaluate(runs[0][3], batches, runs[0][2].tokenizer_params)]
  else:
    results = evaluator.evaluate_sweep([r[3] for r in runs], batches,
                                       [r[2].tokenizer_params for r in runs])
  for (wd, step, _, _), result in zip(runs, results):
    result.update(workdir=wd, step=step, split=settings["split"], data_dir=data_dir,
                  init_slot_iterations=int(settings["init_slot_iterations"]))
  names = [f"step {r[1]}" if len({x[0] for x in runs}) == 1 else f"{os.path.basename(r[0])}@{r[1]}"
           for r in runs]
  table = format_table(results, names)
  summary = dict(results[0]) if len(results) == 1 else dict(runs=results)
  out_path = os.path.join(os.path.abspath(workdir), "eval", "metrics.json")
  if jax.process_index() == 0:
    filesystem.write_json(out_path, summary)
    print(f"\nEvaluation of {config.lam.variant} on {data_dir} ({settings['split']}):\n")
    print(table)
    print(f"\n  metrics: {out_path}", flush=True)
  return dict(summary, table=table, metrics_path=out_path, preempted=False)


def run_evaluation(config: ConfigDict, workdir: str) -> Dict[str, Any]:
  """The `eval` stage of train.py: evaluates the latent action model trained in `workdir`.

  Reads the optional config.eval section (defaults in EVAL_DEFAULTS), prints a
  markdown table, writes <workdir>/eval/metrics.json and returns its dict (plus
  table, metrics_path and preempted=False).
  """
  return evaluate_workdir(workdir, eval_settings(config), run_config=config)


USAGE = ("flam-eval (or python -m flam_jax.evaluate) --workdir=<trained workdir> "
         "[--steps=S1,S2] [--workdirs=W2,W3] [--split=test]")


def main(argv):
  del argv  # Stray arguments are refused by cli.run.
  f = cli.FLAGS
  settings = {key: getattr(f, key) for key in EVAL_DEFAULTS}
  evaluate_workdir(f.workdir, settings)


def define_flags() -> None:
  """The CLI's flags (every config.eval key); defined only when run as a program."""
  cli.define_workdir_flag("Workdir of a trained run (with lam/checkpoints).")
  for key, default in EVAL_DEFAULTS.items():
    {str: cli.flags.DEFINE_string, int: cli.flags.DEFINE_integer}[type(default)](
        key, default, f"eval.{key} (see flam_jax/lib/evaluator.py EVAL_DEFAULTS)")


def run() -> None:
  """Console entry point `flam-eval`."""
  cli.run(main, define_flags, USAGE)


if __name__ == "__main__":
  run()
