"""Real video (Table 4, real-world column): MAGVIT-v2 tokenizer, 224 px, FSQ [4]*7 = 16384 codes.

Import the video first, then train on it (frame skips as in Appendix B):

    python -m flam_jax.data.import_video --src clips/ --format mp4 --out data/sports \
        --image_size 224 --frame_skip 3 --min_frames 10 --skip_short
    python -m flam_jax.data.import_video --src train_CAM_F0.hdf5 --format hdf5 \
        --out data/nuplan --image_size 224 --frame_skip 2 --chunk_length 64
    python train.py --config=configs/video.py:tokenizer --workdir=W --config.data.dir=data/sports
    python train.py --config=configs/video.py:flam --workdir=W --config.data.dir=data/sports
    python train.py --config=configs/video.py:flam,nuplan --workdir=W --config.data.dir=data/nuplan

The argument is `variant[,dataset]`: variant tokenizer | flam | lam | oc_lam (action-free
video has no ground-truth actions, so no wm); dataset sports | egtea (K=32, the default) or
nuplan (K=16). d_model 512 and 3 blocks for FLAM, 256 for LAM and OC+LAM; action FSQ
[2,2,2,2,2] = 32 codes per slot; sub-trajectories of 10 frames, 5 prediction steps,
hierarchical sub-tokens [128, 128] for the 16384 codes.
"""

from configs import multigrid

DATASET_SLOTS = {"sports": 32, "egtea": 32, "nuplan": 16}


def get_config(arg: str = "tokenizer"):
  variant, _, dataset = arg.partition(",")
  dataset = dataset or "sports"
  if variant not in ("tokenizer", "flam", "lam", "oc_lam", "flam_gaussian") or (
      dataset not in DATASET_SLOTS):
    raise ValueError(f"unknown argument {arg!r} of configs/video.py; use variant[,dataset] with "
                     f"variant tokenizer|flam|lam|oc_lam|flam_gaussian and dataset in "
                     f"{sorted(DATASET_SLOTS)}")
  config = multigrid.get_config(variant)
  config.data.image_size = 224
  config.data.generate.enabled = False  # Imported data only: set --config.data.dir.

  tok = config.tokenizer
  tok.kind = "magvit2"
  # Whole-frame encoder (the Multigrid configs encode patch by patch): experiments/README.md's
  # MAGVIT-v2 PSNR was measured so, and real video rarely has pixel-identical patches.
  tok.patch_local = False
  tok.encoder_channels = (128, 128, 256, 256)  # Four stride-2 stages: 224 px -> 14x14 tokens.
  tok.z_channels = 128
  tok.codebook_dim = 128
  tok.levels = (4,) * 7  # 16384 codes.

  lam = config.lam
  lam.d_model = 512 if variant.startswith("flam") else 256
  lam.num_heads = 8
  lam.num_blocks = 3
  lam.aggregator_blocks = 3
  lam.num_slots = DATASET_SLOTS[dataset]
  lam.action_levels = (2, 2, 2, 2, 2)  # 32 codes per slot.
  lam.scene_action_levels = (2, 2, 2, 2, 2)  # LAM / OC+LAM: one scene action, 32 codes.
  lam.subtoken_sizes = (128, 128)
  lam.prediction_steps = 5
  # The slot reconstruction's plain mean over patches: multigrid.py's 10x weight of the
  # moving patches is measured on Multigrid only, where few patches move (a moving camera
  # changes most of them).
  lam.slot_reconstruction_changed_weight = 1.0
  config.data.window_length = 1 if variant == "tokenizer" else 10
  return config
