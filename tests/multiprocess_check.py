"""Run by test_multiprocess.py: multi-process training on one machine against one process.

    python -m tests.multiprocess_check worker DATA WORKDIR PORT PROCESS_ID   # x2 processes
    python -m tests.multiprocess_check reference DATA                        # 1 process

worker: one of 2 processes with 4 CPU devices each, joined by jax.distributed over
localhost (gloo collectives). It trains the tokenizer stage with trainer.train (each
process reads its own grain shard, pipeline.make_dataset's default) for 2 steps, which
saves a checkpoint; then calls train again for 4 steps, which restores that checkpoint
(state and each process's iterator position) and trains 2 more.
reference: one process with 8 devices trains 4 steps on the same global batches, built
by concatenating the two shards' batches in process order.
Both print `RESULT {"losses": {step: loss}, "param_sums": [...]}`.
"""

import json
import os
import sys

import jax

NUM_PROCESSES, DEVICES_PER_PROCESS, STEPS = 2, 4, 4


def tiny_config(data_dir: str):
  from tests import stage_fixtures  # pylint: disable=g-import-not-at-top
  config = stage_fixtures.tiny_config("tokenizer")
  config.data.dir = data_dir
  config.batch_size = 8  # Global: 4 examples per process, 1 per device.
  config.data.num_workers = 0
  config.log_every_steps = 1
  config.image_every_steps = config.checkpoint_every_steps = 1000
  config.progress_bar = False
  # A constant learning rate: the schedule must not depend on num_train_steps, which the
  # worker raises from 2 to 4 when it resumes.
  config.optim.warmup_steps, config.optim.final_lr_fraction = 0, 1.0
  return config


def param_sums(params) -> list:
  """Per-leaf sums, replicated so every process can read them."""
  return [float(x) for x in jax.tree.leaves(jax.jit(
      lambda p: jax.tree.map(lambda a: a.sum(), p))(params))]


def worker(data_dir: str, workdir: str, port: int, process_id: int) -> None:
  jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                    JAX_NUM_PROCESSES=str(NUM_PROCESSES), JAX_PROCESS_ID=str(process_id))
  from flam_jax.lib import sharding, trainer  # pylint: disable=g-import-not-at-top
  from flam_jax.stages.tokenizer import TokenizerStage  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed()  # The env-variable path train.py users take.
  assert jax.process_count() == NUM_PROCESSES and jax.device_count() == 8, jax.devices()
  config = tiny_config(data_dir)
  losses = {}
  for num_steps in (STEPS // 2, STEPS):  # The second call restores the first's checkpoint.
    config.num_train_steps = num_steps
    summary = trainer.train(TokenizerStage(config), config, os.path.join(workdir, "tokenizer"))
    losses[summary["step"]] = summary["metrics"]["loss"]
  print("RESULT " + json.dumps(dict(losses=losses, param_sums=param_sums(
      summary["state"].params))), flush=True)


def reference(data_dir: str) -> None:
  jax.config.update("jax_num_cpu_devices", NUM_PROCESSES * DEVICES_PER_PROCESS)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from flam_jax.lib import optim, sharding, trainer  # pylint: disable=g-import-not-at-top
  from flam_jax.stages.tokenizer import TokenizerStage  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_dir)
  config.num_train_steps = STEPS
  stage = TokenizerStage(config)
  iterators = [pipeline.make_iterator(
      data_dir, "train", window_length=config.data.window_length,
      batch_size=config.batch_size // NUM_PROCESSES, seed=config.seed,
      fields=stage.data_fields, shard_index=i, shard_count=NUM_PROCESSES)
               for i in range(NUM_PROCESSES)]
  mesh = sharding.make_mesh(config.mesh.model_axis_size)
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  batches = [{k: np.concatenate([b[k] for b in parts]) for k in stage.data_fields}
             for parts in zip(*[[next(it) for _ in range(STEPS)] for it in iterators])]
  state = trainer.create_train_state(stage, config, batches[0], mesh, tx)
  step = trainer.jit_train_step(stage, config, mesh, tx)
  losses = {}
  for i, batch in enumerate(batches):
    state, metrics = step(state, sharding.to_global_batch(batch, mesh))
    losses[i + 1] = float(metrics["loss"])
  print("RESULT " + json.dumps(dict(
      losses={k: losses[k] for k in (STEPS // 2, STEPS)}, param_sums=param_sums(state.params))),
        flush=True)


if __name__ == "__main__":
  if sys.argv[1] == "worker":
    worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
  else:
    reference(sys.argv[2])
