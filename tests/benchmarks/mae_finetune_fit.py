"""Chapter 12's fine-tuning budget: how many steps, at which base learning rate, fit the from-scratch arm?

With all 3,000 labels of the chapter's pool, the paper's base lr (1e-3) and 1,000 steps of 128 leave
training from scratch at 47% on its own images (not fitted). This probe trains one arm ("scratch" or
"mae": the shipped encoder of the seed with layer decay 0.75) on the chapter's data (16 px, pool of
3,000 from the 45,000-image training part, validation = the 5,000 held-out images) for a given number of
steps and base lr, and records clean accuracy on its own labelled images and validation accuracy. The
chapter reads the results (``results/mae-finetune-fit-cpu-2core.jsonl``) to say why its budget is what it is.

Run by hand (not collected by pytest), one thread per process, two processes side by side on 2 cores:

    VIT_DATA_DIR=/path/to/data python tests/benchmarks/mae_finetune_fit.py ARM STEPS BASE_LR \
        LABEL_SMOOTHING PADDING FRACTION [SEED] >> results/mae-finetune-fit-cpu-2core.jsonl

e.g. ``scratch 3500 4e-3 0.1 2 1.0 0``. Each run prints one JSON line.
"""
import json
import sys

import torch

from vit_from_scratch.checkpoints import load_trained_model
from vit_from_scratch.config import ViTConfig
from vit_from_scratch.data import channel_stats, load_cifar10, resize_images, validation_split
from vit_from_scratch.loaders import make_loader
from vit_from_scratch.mae_training import finetune, scaled_lr
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.recipe import TrainConfig
from vit_from_scratch.runtime import seed_everything
from vit_from_scratch.training import evaluate

torch.set_num_threads(1)

arm, steps, base = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ls, pad, frac = float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
seed = int(sys.argv[7]) if len(sys.argv) > 7 else 0
if arm not in ("scratch", "mae"):
    sys.exit(f"ARM must be scratch or mae, got {arm!r}")
train_full, test_full = load_cifar10()
train_part, val_full = validation_split(train_full, 5000, seed=0)
pool = resize_images(train_part.subset(3000, seed=0), 16)
val = resize_images(val_full, 16)
mean, std = channel_stats(pool.images)
labelled = pool if frac == 1.0 else validation_split(pool, frac, seed=100 + seed)[1]
cfg = ViTConfig(image_size=16, patch_size=4, num_classes=10, dim=96, depth=6, num_heads=3, mlp_ratio=2.0,
                pos_embed_type="sincos")
tc = TrainConfig(model=cfg, batch_size=128, lr=scaled_lr(base, 128), min_lr=1e-6, warmup_epochs=0.05,
                 weight_decay=0.05, betas=(0.9, 0.999), label_smoothing=ls, grad_clip=0.0, padding=pad, flip=True,
                 seed=seed)
seed_everything(seed)
if arm == "scratch":
    model, layer_decay = VisionTransformer(cfg), 1.0
else:
    model, _ = load_trained_model(f"cifar10_mae_16px_seed{seed}")
    layer_decay = 0.75
run = finetune(model, labelled, tc, steps=steps, layer_decay=layer_decay, mean=mean, std=std)


def accuracy(data):
    return evaluate(run.model, make_loader(data, 500, train=False, mean=mean, std=std))["accuracy"]


print(json.dumps(dict(arm=arm, steps=steps, base=base, ls=ls, pad=pad, frac=frac, seed=seed,
                      train=accuracy(labelled), val=accuracy(val), s=run.seconds)))
