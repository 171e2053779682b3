"""Chapter 12 probe, for orientation only (one seed, not used by the chapter): at the chapter's MAE budget
(100 epochs on the 3,000-image pool at 16 px, ViT width 96, 6 blocks), does longer fine-tuning fit the
from-scratch arm, and does MAE fine-tuning still beat it when both are trained longer?

Run by hand (not collected by pytest), one thread per process:

    VIT_DATA_DIR=/path/to/data python tests/benchmarks/mae_probe.py --steps 1000 --base-lr 1e-3 --tag A

Each line printed is one JSON record (pretraining, then one per fine-tuning run: clean accuracy on its
own labelled images, validation accuracy, seconds). Results: ``results/mae-probe-cpu-2core.jsonl``.
"""
import argparse, json, time, sys
import numpy as np, torch
torch.set_num_threads(1)
from vit_from_scratch.config import ViTConfig
from vit_from_scratch.data import channel_stats, load_cifar10, normalize, resize_images, validation_split
from vit_from_scratch.loaders import make_loader
from vit_from_scratch.mae import MaskedAutoencoder, pretrain, vit_from_mae
from vit_from_scratch.mae_training import finetune, scaled_lr
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.recipe import TrainConfig
from vit_from_scratch.runtime import seed_everything
from vit_from_scratch.training import evaluate

ap = argparse.ArgumentParser()
ap.add_argument("--pretrain-pool", type=int, default=3000)
ap.add_argument("--epochs", type=int, default=100)
ap.add_argument("--steps", type=int, default=1000)
ap.add_argument("--base-lr", type=float, default=1e-3)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--arms", default="scratch,mae")
ap.add_argument("--fractions", default="0.1,1.0")
ap.add_argument("--layer-decay", type=float, default=0.75, help="the MAE arm's layer-wise lr decay")
ap.add_argument("--tag", default="x")
a = ap.parse_args()

train_full, test_full = load_cifar10()
train_part, val_full = validation_split(train_full, 5000, seed=0)
SIZE = 16
pool32 = train_part.subset(3000, seed=0)
pool = resize_images(pool32, SIZE)
val_set = resize_images(val_full, SIZE)
pre_pool = pool if a.pretrain_pool == 3000 else resize_images(train_part.subset(a.pretrain_pool, seed=0), SIZE)
mean, std = channel_stats(pool.images)
stats = dict(mean=mean, std=std)
cfg = ViTConfig(image_size=SIZE, patch_size=4, num_classes=10, dim=96, depth=6, num_heads=3,
                mlp_ratio=2.0, pos_embed_type="sincos")
DEC = dict(decoder_dim=64, decoder_depth=2, decoder_heads=4)

def acc(model, data):
    return evaluate(model, make_loader(data, 500, train=False, device="cpu", **stats))["accuracy"]

mae = None
if "mae" in a.arms:
    t0 = time.perf_counter()
    seed_everything(a.seed)
    mae = MaskedAutoencoder(cfg, **DEC)
    pc = TrainConfig(model=cfg, epochs=a.epochs, batch_size=256, lr=scaled_lr(1.5e-4, 256), min_lr=0.0,
                     warmup_epochs=max(1.0, 0.05 * a.epochs), weight_decay=0.05, betas=(0.9, 0.95),
                     grad_clip=0.0, padding=2, flip=True, seed=a.seed)
    r = pretrain(mae, pre_pool, pc, device="cpu", log=None)
    print(json.dumps(dict(tag=a.tag, what="pretrain", pool=len(pre_pool), epochs=a.epochs,
                          loss=r.history[-1]["loss"], minutes=(time.perf_counter() - t0) / 60)), flush=True)
ft = TrainConfig(model=cfg, batch_size=128, lr=scaled_lr(a.base_lr, 128), min_lr=1e-6, warmup_epochs=0.05,
                 weight_decay=0.05, betas=(0.9, 0.999), label_smoothing=0.1, grad_clip=0.0, padding=2,
                 flip=True, seed=a.seed)
for f in [float(x) for x in a.fractions.split(",")]:
    labelled = pool if f == 1.0 else validation_split(pool, f, seed=100 + a.seed)[1]
    for arm in a.arms.split(","):
        seed_everything(a.seed)
        model = VisionTransformer(cfg) if arm == "scratch" else vit_from_mae(mae)
        t0 = time.perf_counter()
        run = finetune(model, labelled, ft, steps=a.steps, layer_decay=1.0 if arm == "scratch" else a.layer_decay,
                       device="cpu", **stats)
        print(json.dumps(dict(tag=a.tag, arm=arm, fraction=f, steps=a.steps, base_lr=a.base_lr,
                              layer_decay=1.0 if arm == "scratch" else a.layer_decay,
                              pretrain_pool=a.pretrain_pool, epochs=a.epochs, seed=a.seed,
                              train=acc(run.model, labelled), val=acc(run.model, val_set),
                              seconds=time.perf_counter() - t0)), flush=True)
