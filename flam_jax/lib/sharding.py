"""Device mesh, multi-host initialisation and batch placement, on JAX's own runtime.

The mesh has two axes: `data` (the batch is split across it) and `model`. Every
parameter is replicated on every device and nothing is split over `model`: with
`model_axis_size` > 1 its devices hold copies of the same batch shard and repeat the
same work (size 1, the default, is the useful setting). Both axes use Auto axis
types: `with_sharding_constraint` fails under Explicit axes on jax 0.10.
"""

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flam_jax.errors import ConfigError

DATA_AXIS = "data"
MODEL_AXIS = "model"


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when launched as one of several processes.

  Cloud TPU pods and SLURM/Kubernetes GPU jobs are auto-detected by JAX; a manual
  launch sets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  if jax.distributed.is_initialized():
    return
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()  # Auto-detects SLURM and Cloud TPU pod slices.
  if jax.process_count() > 1:
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def make_mesh(model_axis_size: int = 1, devices=None) -> Mesh:
  """A [data, model] mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  num_devices = len(devices)
  if model_axis_size < 1 or num_devices % model_axis_size:
    raise ConfigError(
        f"config.mesh.model_axis_size={model_axis_size} does not divide the {num_devices} "
        "devices; set it to a divisor of the device count (1 replicates parameters)")
  shape = (num_devices // model_axis_size, model_axis_size)
  axis_type = getattr(jax.sharding, "AxisType", None)
  if axis_type is not None:
    return jax.make_mesh(shape, (DATA_AXIS, MODEL_AXIS), axis_types=(axis_type.Auto,) * 2,
                         devices=devices)
  return jax.make_mesh(shape, (DATA_AXIS, MODEL_AXIS), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis; the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-process batch size, or raises a ConfigError naming the fix."""
  data_size = mesh.shape[DATA_AXIS]
  if global_batch_size % data_size:
    raise ConfigError(
        f"config.batch_size={global_batch_size} is not divisible by the {data_size} devices "
        f"of the data axis; use a multiple of {data_size}")
  return global_batch_size // jax.process_count()


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's numpy batch into one globally sharded jax.Array per field."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
