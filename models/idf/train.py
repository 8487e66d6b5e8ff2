"""Train the Integer Discrete Flow on CIFAR-style uint8 images.

    python -m amdcompress.models.idf.train --threads 1 --minutes 110
    python -m amdcompress.models.idf.train --resume runs/idf/last.pt --minutes 60
    python -m amdcompress.models.idf.train --resume runs/idf/last.pt --export --weights-name idf-v4
    python -m amdcompress.models.idf.train --resume MODEL_WITHOUT_CASCADE.pt --top-groups 4 \
        --train-only top_cascade. --lr 5e-4 --half-life 1e12 --minutes 14
    python -m amdcompress.models.idf.train --resume MODEL.pt --context-level 0 \
        --train-only contexts. --minutes 50

The last two forms grow a trained model by a top cascade
(:class:`.network.TopCascade`) or by a stage-wise context prior for the half
factored out at level L (:class:`.network.FactorContext`), zero-initialised,
so the model starts at the same likelihood, and train only the new part, the
rest fixed at its averaged weights: how the top cascade and the level-0
context of idf-v3 were grown from idf-v1 (the record lists the commands)
before all of it was trained together.

Loss: negative log-likelihood in bits per dimension (exact: the flow is an
integer bijection), on batches of the uint8 training images (memory-mapped,
never copied as floats) with horizontal flips. Adamax, linear warm-up
(again after a resume whose optimizer state cannot be restored), exponential
decay to a floor, an EMA of the weights for evaluation and shipping. The loop,
checkpoints (``OUT/last.pt`` every ``--ckpt-minutes``; any earlier layout
resumes), the held-out evaluation of the EMA weights on ``--test-data`` every
``--eval-minutes`` (``OUT/log.txt``, ``OUT/metrics.jsonl``) and the export
(``models/weights/NAME.pt`` + ``NAME.json``, never over other weights unless
``--replace``) are :mod:`..training`'s.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from .. import training
from ..datasets import shared_data_dir
from .network import IDF, make_config, to_input

DATA = str(shared_data_dir() / "cifar10" / "train.npy")
TEST = str(shared_data_dir() / "cifar10" / "test.npy")
WEIGHTS_NAME = "idf-v3"


@torch.no_grad()
def evaluate(model: IDF, images: np.ndarray, batch: int = 100, device="cpu", channels_last=False) -> float:
    """Bits per dimension of ``images`` (uint8 NHWC) under ``model``."""
    was = model.training
    model.eval()
    bits, dims = 0.0, 0
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _, b = model(x)
        bits += float(b.double().sum())
        dims += x.numel()
    model.train(was)
    return bits / dims


def load_grown(model: IDF, state: dict) -> None:
    """Load a state dict that may lack the parameters of parts added since
    (a top cascade, factor contexts); those keep their function-preserving
    initialisation."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = [k for k in missing if not k.startswith(("top_cascade.", "contexts."))]
    if new or unexpected:
        raise SystemExit(f"checkpoint does not fit the model (missing {new[:3]}, unexpected {unexpected[:3]})")


def held_out(path: str, limit: int = 0) -> np.ndarray:
    images = np.load(path, mmap_mode="r")
    return np.ascontiguousarray(images[:limit] if limit else images)


class IdfTrainer(training.Trainer):
    kind, weights_name, weights_format = "idf", WEIGHTS_NAME, "amdcompress-idf"
    metric, heldout, unit, record_metric = "bpd", "test", "images", "final_test_bpd"
    heldout_flag, heldout_data = "--test-data", TEST
    defaults = dict(data=DATA, minutes=60.0, device="auto", batch=64, lr=2e-3, schedule="exp",
                    warmup=300, half_life=15000.0, min_lr=5e-5, ema=0.999, clip=200.0, ckpt_minutes=5.0,
                    eval_minutes=10.0, log_every=1000)
    options = dict(config="{}", top_groups=0, eval_images=0, channels_last=1)
    helps = dict(config="JSON overrides of the model config (new runs only)",
                 top_groups="give a resumed model a top cascade of this many channel groups (its new nets start "
                            "at zero, so the model's likelihood is unchanged at the start)",
                 eval_images="held-out images evaluated in training (0: all)",
                 channels_last="channels_last memory format (faster on CPU)")

    def add_arguments(self, p) -> None:
        p.add_argument("--context-level", type=int, action="append", default=[],
                       help="give a resumed model a stage-wise context prior (FactorContext, starting at zero) for "
                            "the half factored out at this level; repeatable")

    def new_config(self, args) -> dict:
        if args.top_groups or args.context_level:
            raise SystemExit("--top-groups and --context-level extend a resumed model; for a new run use --config")
        return make_config(**json.loads(args.config))

    def config(self, args, start) -> dict:
        if start is None:
            return self.new_config(args)
        cfg = dict(start.config)
        if args.top_groups and args.top_groups != cfg.get("top_groups", 1):
            if cfg.get("top_groups", 1) > 1:
                raise SystemExit(f"{args.resume} already has a top cascade of {cfg['top_groups']} groups")
            cfg = dict(cfg, top_groups=args.top_groups, top_width=cfg.get("top_width", 64))
        grow = [lev for lev in args.context_level if lev not in cfg.get("context_levels", [])]
        if grow:
            if any(not 0 <= lev < cfg["levels"] for lev in grow):
                raise SystemExit(f"--context-level must lie in [0, {cfg['levels'] - 1}]")
            cfg = dict(cfg, context_levels=sorted(cfg.get("context_levels", []) + grow))
        return cfg

    def build(self, config, args=None) -> IDF:
        model = IDF(config)
        if args is not None and args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def load(self, model, state) -> None:
        load_grown(model, state)

    def optimizer(self, params, args):
        return torch.optim.Adamax(params, lr=args.lr)

    def prepare(self, args, model, loop):
        train = np.load(args.data, mmap_mode="r")  # uint8; batches are read from it
        test = held_out(args.valid, args.eval_images)
        loop.describe_data(train=args.data, train_images=len(train), test=args.valid, test_images=len(test),
                           augmentation="horizontal flip")
        rng = np.random.default_rng(args.seed + loop.step)
        n, batch = len(train), min(args.batch, len(train))
        order = {"perm": rng.permutation(n), "pos": 0}
        channels_last = torch.channels_last if args.channels_last else torch.contiguous_format

        def step_loss():
            if order["pos"] + batch > n:
                order.update(perm=rng.permutation(n), pos=0)
            idx = np.sort(order["perm"][order["pos"] : order["pos"] + batch])
            order["pos"] += batch
            xb = train[idx]
            flip = rng.random(batch) < 0.5
            xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
            loss, _ = model(to_input(xb).to(loop.device).contiguous(memory_format=channels_last))
            return loss, batch

        def held_out_bpd() -> dict:
            return {"bpd": evaluate(model, test, device=loop.device, channels_last=bool(args.channels_last)),
                    "images": len(test)}

        return step_loss, held_out_bpd, dict

    def export_fields(self, model, args, start, payload) -> dict:
        test = held_out(args.valid)
        return {"arch": "idf", "final_test_bpd": evaluate(model, test, channels_last=bool(args.channels_last)),
                "test_images": len(test),
                "test_bpd_is": "EMA weights as shipped (float16), model NLL on the held-out batch (not coded size)"}


TRAINER = IdfTrainer()
main = TRAINER.main  # main(argv=None) -> int

if __name__ == "__main__":
    sys.exit(main())
