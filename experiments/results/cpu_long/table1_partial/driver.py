# The ad-hoc driver of the 2000-episode runs as run on 2026-11-29 (that machine's paths);
# `python experiments/table1.py --setting=cpu_long` is the reproducible form of this recipe.
"""FLAM at the cpu setting x3 (seed: 3rd argument, default 0) on 2000 episodes instead of 400: does more data stop
the overfitting seen at 400 (train accuracy 0.983 vs test 0.948, copy 0.95)?

Optional 4th argument: config overrides as JSON ('{"lam.num_slots": 8}'), with a 5th argument naming the run
(workdir <variant>_<name>_4a_<episodes>/seed<seed>)."""
import json, os, sys, time
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))
from experiments import settings
from experiments.runner import latest_step
from flam_jax import train, evaluate
from flam_jax.lib import evaluator

episodes = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
variant = sys.argv[2] if len(sys.argv) > 2 else "flam"
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
name = f"{variant}_{sys.argv[5]}" if len(sys.argv) > 5 else variant
root = "/tmp/flam_device_experiment/runs/cpu_x3_more"
data_dir = f"{root}/data_4a_{episodes}"
tokenizer = "/tmp/flam_device_experiment/runs/cpu_x3/tokenizer_4a"
workdir = f"{root}/{name}_4a_{episodes}/seed{seed}"
setting = settings.get_setting("cpu")
config = settings.lam_config(setting, variant, 4, seed, data_dir, tokenizer, 3.0, overrides)
config.data.generate.episodes = episodes
if not os.path.exists(os.path.join(data_dir, "metadata.json")):
  train.write_dataset(config, data_dir, progress=False)
done = latest_step(os.path.join(workdir, "lam", "checkpoints"))
if done is None or done < config.num_train_steps:
  start = time.time()
  if train.run(config, workdir).get("preempted"):
    sys.exit(143)  # SIGTERM: the checkpoint is saved; re-run to resume, evaluate when finished.
  print("trained in", time.time() - start, flush=True)
s = dict(evaluator.EVAL_DEFAULTS)
s.update({k: v for k, v in setting.eval.items() if k in s})
s.update(workdirs="", steps="")
summary = evaluate.evaluate_workdir(workdir, s, run_config=config)
out = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, list, type(None)))}
json.dump(out, open(f"{workdir}/summary.json", "w"), indent=1)
for k in ("psnr_t", "delta_psnr_t", "token_accuracy_t", "copy_psnr_t", "copy_token_accuracy_t",
          "ari_fg", "disentanglement", "probe_accuracy", "probe_accuracy_given_heading",
          "probe_majority", "tokenizer_psnr"):
  print(k, out.get(k), flush=True)
