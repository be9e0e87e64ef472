"""Multigrid at the paper's scale (Table 4, Appendix B): 128x128 frames, 32x32 grid, 4 agents.

    python train.py --config=configs/multigrid.py:tokenizer --workdir=W     # stage 1, Sec 4.1
    python train.py --config=configs/multigrid.py:flam --workdir=W          # stage 2, Sec 4.2
    python train.py --config=configs/multigrid.py:lam|oc_lam|wm --workdir=W # baselines, Sec 5.2
    python train.py --config=configs/multigrid.py:flam_v2 --workdir=W       # later version
    python train.py --config=configs/multigrid.py:policy --workdir=P \
        --config.data.dir=DEMOS --config.policy.lam_workdir=W      # policy, Sec 4.3

The latent action variants read the tokenizer of the same workdir (or
`lam.tokenizer_checkpoint`) and cache its tokens in <workdir>/tokens (or
`lam.token_cache_dir`, which runs on the same data and tokenizer may share) once.
"""

from ml_collections import ConfigDict

VARIANTS = ("tokenizer", "flam", "lam", "oc_lam", "wm", "flam_v2", "flam_regression", "policy")


def get_config(arg: str = "tokenizer") -> ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/multigrid.py; use one of {VARIANTS}")
  config = ConfigDict()
  config.stage = {"tokenizer": "tokenizer", "policy": "policy"}.get(arg, "lam")
  config.seed = 0
  config.num_train_steps = 50_000
  config.batch_size = 64  # Global, over all devices and processes: windows per step.
  config.log_every_steps = 100
  config.image_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3
  config.progress_bar = True
  config.compute_dtype = "float32"  # or "bfloat16": bf16 compute, float32 params and losses.
  # A step with a non-finite loss or gradient norm stops the run before anything is saved
  # (False) or is skipped, leaving parameters and optimizer state unchanged (True).
  config.skip_nonfinite_steps = False
  # XLA options of each stage's train step on a CPU (ignored on a GPU/TPU), by stage name;
  # "" leaves an option to XLA. XLA's default (jax 0.10) hands convolutions to YNNPACK, which
  # runs the tokenizer's small-channel ones ~1.8x slower than XLA's own kernels: the tokenizer
  # lets YNNPACK fuse dots only (its step 1.25x faster on a 2-core AMD EPYC). The world models
  # have no convolutions and keep the default (DOT costs the paper-size FLAM step 1.15x;
  # ELTWISE fails in it, XLA: "unsupported layout in YNN fusion"). benchmarks/RESULTS.md.
  config.cpu_compiler_options = ConfigDict(dict(tokenizer=ConfigDict(dict(
      xla_cpu_experimental_ynn_fusion_type="LIBRARY_FUSION_TYPE_DOT"))))
  # Per-stage overrides of the keys above, for configs whose `stage` lists several stages
  # ("tokenizer,lam"): e.g. per_stage.tokenizer.num_train_steps.
  config.per_stage = ConfigDict()

  config.data = ConfigDict()
  config.data.dir = ""  # Empty: <workdir>/data, generated there if missing (see data.generate).
  # A TFDS dataset by name (flam_multigrid/agents4, flam_video/<name>, any ArrayRecord TFDS
  # video or RLDS dataset) in data.tfds_data_dir (empty: ~/tensorflow_datasets), imported once
  # into data.dir; flam_multigrid names are generated there first (flam_jax/data/tfds_builders.py).
  config.data.name = ""
  config.data.tfds_data_dir = ""
  config.data.image_size = 128
  # Frames per example: single frames for the tokenizer, sub-trajectories of 10 (Table 4)
  # for the latent action model.
  config.data.window_length = 1 if arg in ("tokenizer", "policy") else 10
  config.data.window_stride = 1
  config.data.num_workers = 4
  config.data.prefetch_buffer_size = 4
  # wall_density 0: an empty room inside the wall ring, as the paper's Minari
  # `empty-agent_K` splits (Appendix B); raise it for cluttered rooms.
  config.data.generate = ConfigDict(dict(
      enabled=True, num_agents=4, grid_size=32, episodes=2_000, episode_length=32,
      sticky_prob=0.5, wall_density=0.0, seed=0))

  config.tokenizer = ConfigDict()
  config.tokenizer.encoder_channels = (64, 128, 128)  # IMPALA stages: 128 px -> 16x16 patches.
  config.tokenizer.z_channels = 128
  config.tokenizer.codebook_dim = 128
  config.tokenizer.levels = (4, 4, 4, 4, 4)  # FSQ: 1024 implicit codes.
  # Encode each patch on its own: unchanged content keeps its token (token stability).
  config.tokenizer.patch_local = True

  # flam_v2 is the later version (shared/seeds/flam-summary.txt): continuous per-slot
  # latent actions of size d/K with a beta-weighted KL, a residual regression aggregator
  # z_hat_{t+1} = z_t + Aggregator(s_hat_{t+1}), causal temporal attention over slots.
  variant = {"flam_v2": "flam", "flam_regression": "flam"}.get(arg, arg)
  config.lam = ConfigDict()
  config.lam.variant = variant if arg not in ("tokenizer", "policy") else "flam"  # flam | lam | oc_lam | wm
  config.lam.tokenizer_checkpoint = ""  # Empty: <workdir>/tokenizer/checkpoints.
  # Where the tokenizer's tokens of data.dir are cached; runs sharing the dataset and the
  # tokenizer may share it (rebuilt when either changes). Empty: <workdir>/tokens.
  config.lam.token_cache_dir = ""
  config.lam.d_model = 256
  config.lam.num_heads = 8
  config.lam.num_blocks = 2
  # K: one factor per agent and one for the background and walls (with K = agents,
  # slot attention's softmax over slots makes the static scene share a slot with an agent).
  config.lam.num_slots = 5
  config.lam.slot_iterations = 3
  config.lam.recursive_init = True  # Sec 5.5: initialise frame t's slots from frame t-1's.
  # Frame 0's slots: "learned" embeddings (SAVi) or "sampled" from one learned Gaussian
  # shared by the slots (Locatello et al.; slots exchangeable, see slot_attention.py).
  config.lam.slot_init = "learned"
  # Iterations for frame 0 (every frame without recursive_init), which starts from the
  # initial slots instead of t-1's; 0 means slot_iterations.
  config.lam.init_slot_iterations = 0
  # How a patch's position enters slot attention: "learned" (a free vector per patch) or
  # "grid" (a Dense map of its grid coordinates, Slot Attention's soft position embedding).
  # "grid" since 2026-12-06: with 4 agents (experiments' `cpu` setting, seeds 0-2) FLAM's
  # PSNR_1 25.42 +- 0.39 dB against 24.16 for copy, Delta PSNR_1 1.33 +- 0.61, where
  # "learned" gave 24.31 +- 0.32 and 0.18 +- 0.36 (experiments/README.md, Table 1).
  config.lam.slot_position_embedding = "grid"
  config.lam.temporal_attention = arg == "flam_v2"  # Causal attention over time in slots.
  config.lam.slot_matching = "none"  # none | distribution | hungarian | contrastive (App. E).
  config.lam.slot_matching_weight = 1.0
  # flam, oc_lam: weight of the spatial-broadcast feature reconstruction of each frame
  # from its own slots (DINOSAUR-style alpha masks; binds slots to objects). 0: off.
  config.lam.slot_reconstruction_weight = 1.0
  # ... and the weight of the patches whose token changes from a neighbouring frame in
  # that reconstruction's mean over patches (our addition; 1: the paper's plain mean; see
  # LatentActionStage._slot_reconstruction_loss). Agents are a few patches of the frame, so
  # the plain mean is nearly all floor and walls. 10, measured on a 2-core Intel CPU at the
  # cpu setting (4 agents, seeds 0-2): FLAM's PSNR_1 27.63 +- 0.16 dB against 26.73 +- 0.25
  # and Delta PSNR_1 3.67 +- 0.20 against 2.79 +- 0.32; flam_v2's 31.31 +- 1.92 dB against
  # 27.60 +- 0.93 and 7.42 +- 1.78 against 3.28 +- 1.19; OC+LAM's within its seeds' spread
  # (24.75 against 24.49); in the quickstart the actions were used on 4 of 4 seeds against
  # 2 of 4 (experiments/README.md, "The slot reconstruction weighs what moves"). With 2 and
  # 8 agents FLAM's mean is unchanged (31.17 vs 31.05, 22.59 vs 22.58 dB; Table 2, "Table 2
  # with the moving-patch weight").
  # (LAM and WM have no slots: 1, which leaves their kept runs' configs as they were.)
  config.lam.slot_reconstruction_changed_weight = (
      10.0 if config.lam.variant in ("flam", "oc_lam") else 1.0)
  # ... and how that decoder places a slot at each patch: "learned" or "grid", as above.
  config.lam.slot_decoder_position_embedding = "learned"
  # flam, oc_lam: weight of the same decoder's reconstruction of frame t+1's features from
  # the FDM's predicted slots (a dense per-slot dynamics signal; needs the one above). 0: off.
  # Our addition, on for the regression variants: on the toy of tests/test_learning.py
  # neither flam_v2 nor flam_regression used its actions without it (action gain 0 for
  # 1000-2500 steps); it did not help the classification aggregator there (gain 0.21 vs 0.28).
  config.lam.predicted_slot_reconstruction_weight = (
      1.0 if arg in ("flam_v2", "flam_regression") else 0.0)
  config.lam.action_kind = "gaussian" if arg == "flam_v2" else "fsq"
  config.lam.action_levels = (2, 2)  # 4 codes per slot (Table 4, Multigrid).
  config.lam.action_latent_dim = 0  # Gaussian: 0 means d_model / K per slot.
  # beta of the later version's KL term, against our per-element mean of the squared error
  # (README "Loss convention"): the summary's ||z_{t+1} - z_hat||^2 is a sum over N x Dz
  # elements, so this is its beta / (N Dz). 1e-3 collapsed the posterior on the quickstart
  # (KL 0.007 nats and action gain 0 at step 1600, where copy's error is 0.025 a feature).
  config.lam.kl_weight = 1e-5
  # FSQ latent actions: LFQ-style entropy penalty (per-sample minus batch code entropy)
  # that keeps the bottleneck from collapsing onto one code early in training.
  config.lam.action_entropy_weight = 0.1
  config.lam.scene_action_levels = (4, 4, 4, 4)  # LAM/OC+LAM: 256 = 4 actions ^ 4 agents.
  config.lam.aggregator_mode = ("regression" if arg in ("flam_regression", "flam_v2")
                                else "classification")
  # Predict the change from the rollout's start frame (the later version's residual;
  # for classification, each patch also sees its start-frame token). False: the paper's
  # first version, where every next-frame token is rebuilt from the K slots alone.
  config.lam.aggregator_residual = True
  # Classification: probability of hiding each previous-token input in teacher forcing,
  # against exposure bias (teacher-forced accuracy above copy, greedy decoding below).
  # 0.3 did not help on the quickstart (one seed: greedy token accuracy 0.974 either way).
  config.lam.aggregator_context_dropout = 0.0
  # Classification: predict every next-frame token at once from the slots and the start
  # frame's token (bidirectional, one pass) instead of autoregressively in raster order.
  config.lam.aggregator_parallel = False
  # Prediction loss: weight of the patches whose token changes from the start frame
  # (1: the plain mean over patches; see LatentActionStage._prediction_loss).
  config.lam.changed_patch_weight = 1.0
  # FDM: add each entity's embedded action to its stream before every block, besides
  # the temporal cross-attention to it, so that the prediction cannot ignore the action.
  config.lam.fdm_additive_actions = True
  # FDM: zero-initialised action embeddings (against the early collapse of FSQ codes);
  # flam_v2's Gaussian actions learn faster from a random init (experiments/README.md).
  config.lam.fdm_zero_init_actions = arg != "flam_v2"
  config.lam.subtoken_sizes = (32, 32)  # Hierarchical sub-tokens for 1024 codes (Table 4).
  config.lam.aggregator_blocks = 2
  config.lam.prediction_steps = 5  # Multi-step training (Table 4).
  # Which rollouts the loss trains: "full", the starts with P full steps (T - P of them), or
  # "every" start, each rolled until the window ends (T=10, P=5: 35 predictions a window
  # against 25, the PyTorch peer's objective; world_model.training_pairs).
  config.lam.rollout_starts = "full"
  # Rematerialise the IDM/FDM/aggregator blocks: ~1/3 more FLOPs for far less memory.
  # LAM at Table 4's size keeps [P, B*S, heads, N, N] attention weights per block
  # otherwise (benchmarks/RESULTS.md: 23.9 GiB of temporaries at batch 8 without it).
  config.lam.remat = True
  # Recompute each block on the whole batch (1), or a slice at a time in a loop (n > 1):
  # XLA:GPU schedules plain remat well (H200, batch 64, bf16: FLAM 9.7 GiB, LAM 14.7 GiB
  # peak, and 1.4-1.6x faster than 8 slices), while XLA:CPU keeps every block's recomputed
  # activations live (LAM 64 GiB, FLAM 36 GiB of temporaries), so at this size on a CPU set
  # --config.lam.remat_chunks=8 (15 GiB each; FLAM at batch 8 is faster with it there too,
  # 9.99 against 12.59 s/step). Figures: benchmarks/RESULTS.md.
  config.lam.remat_chunks = 1
  config.lam.reconstruction_weight = 1.0  # OC+LAM's object-centric loss.

  # Evaluation (`--config.stage=eval`, flam_jax/lib/evaluator.py): PSNR_t, Delta PSNR, SSIM,
  # ARI-FG, slot-agent disentanglement and the latent action probe on a split.
  config.eval = ConfigDict(dict(
      split="test", batch_size=0, max_batches=0, window_stride=0, steps="", workdirs="",
      seed=0, probe_steps=300, starts="first"))

  # Policy learning (Sec 4.3, `--config.stage=policy`, flam_jax/stages/policy.py) on goal-task
  # demonstrations (flam_jax.data.goal_task): behaviour cloning on pseudo-labels f(a) of the
  # world model in policy.lam_workdir (empty: this workdir), or on true actions
  # (mode=labelled: the num_labels labelled transitions only; true_actions: all of them).
  # decoder_slots: which of a slot model's latent actions f reads: "attention" (f learns
  # to pick a slot from the labels) or "matched_by_masks" (a reference that uses the
  # data's entity masks: the slot matched to the controlled agent, as evaluation matches).
  # Procgen only: eval_levels "held_out" (levels no demonstration played) or "demonstrated"
  # (the train split's levels: Procgen's train-level return); eval_max_steps > 0 cuts the
  # evaluation episodes there (0: the game's own limit).
  config.policy = ConfigDict(dict(
      mode="pseudo_labels", lam_workdir="", num_labels=1000, decoder_hidden=64,
      decoder_steps=500, decoder_learning_rate=3e-3, decoder_validation_fraction=0.2,
      decoder_slots="attention",
      channels=(32, 64), hidden=128, eval_episodes=100, eval_seed=1000,
      eval_levels="held_out", eval_max_steps=0))
  # The policy stage reads single transitions, whatever the world model's window.
  config.per_stage.policy = ConfigDict(dict(data=ConfigDict(dict(window_length=1))))
  if arg == "policy":
    config.num_train_steps = 5_000

  config.optim = ConfigDict(dict(
      learning_rate=3e-4, warmup_steps=1_000, final_lr_fraction=0.1, weight_decay=1e-4,
      grad_clip_norm=1.0, b1=0.9, b2=0.99))

  config.mesh = ConfigDict(dict(model_axis_size=1))
  return config
