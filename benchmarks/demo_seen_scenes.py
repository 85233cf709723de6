"""Diagnosis, never a model to ship: train the demo model with held-out photos *added* to the
training photos, to ask whether the test split's accuracy is limited by unseen scenes or by the
images themselves (faint ink a model cannot read even on a scene it knows).

    .venv/bin/python benchmarks/demo_seen_scenes.py --photos board,building,smarties,starry_night \
        --share 0.25 --base-weights runs/demo24/photo_weights.json -- <iared_edge.demo.train arguments>

Everything after `--` goes to `python -m iared_edge.demo.train` unchanged (so runs resume as
usual), with `--photo-weights` replaced: the named photos join the train split (re-coloured like
every training photo) and get `--share` of the draws between them, equally; the training photos
share the rest in proportion to `--base-weights` (or equally). The test split itself is not
touched: `benchmarks/demo_error_analysis.py` then reads the run's export on the usual test
images, whose crops now come from photos the model has seen. Single process (`--workers 0`): the
added photos are a patch of this process, which spawned workers would not inherit.
"""
import argparse
import json
import os
import sys

from iared_edge.demo import digits, train

_ORIGINAL_NAMES = digits._background_names


def train_names_with(photos):
    """`digits._background_names` with `photos` (held-out photo names) in the train split."""
    def names(split):
        base = _ORIGINAL_NAMES(split)
        return sorted(base + [p for p in photos if p not in base]) if split == "train" else base
    return names


def mixed_weights(train_photos, photos, share, base=None):
    """{photo: weight} summing to 1: `photos` get `share` equally, `train_photos` the rest in
    proportion to `base` ({photo: weight}; None: equally)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"--share must be in (0, 1), got {share}")
    base = base or {p: 1.0 for p in train_photos}
    missing = sorted(set(train_photos) - set(base))
    if missing:
        raise ValueError(f"--base-weights has no weight for training photos {missing}")
    total = sum(base[p] for p in train_photos)
    w = {p: (1.0 - share) * base[p] / total for p in train_photos}
    w.update({p: share / len(photos) for p in photos})
    return w


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: demo_seen_scenes.py --photos A,B [--share S] [--base-weights F] -- <train args>")
    cut = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", required=True, help="held-out photo names, comma-separated")
    ap.add_argument("--share", type=float, default=0.25)
    ap.add_argument("--base-weights", default="", help="a --photo-weights file for the training photos")
    args = ap.parse_args(argv[:cut])
    train_args = list(argv[cut + 1:])
    photos = [p for p in args.photos.split(",") if p]
    held = set(digits.VAL_BACKGROUNDS + digits.TEST_BACKGROUNDS)
    unknown = sorted(set(photos) - held)
    if not photos or unknown:
        raise SystemExit(f"--photos must name held-out photos ({sorted(held)}); got unknown {unknown or photos}")
    if "--photo-weights" in train_args or any(a.startswith("--photo-weights=") for a in train_args):
        raise SystemExit("give the training photos' weights as --base-weights, before --")
    if "--out" not in train_args:
        raise SystemExit("the train arguments need --out (the weights file is written there)")
    if any(a.startswith("--workers") for a in train_args):
        raise SystemExit("--workers: this diagnosis runs in one process (see its docstring)")
    out = train_args[train_args.index("--out") + 1]
    try:
        weights = mixed_weights(_ORIGINAL_NAMES("train"), photos, args.share,
                                train.read_photo_weights(args.base_weights))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "photo_weights_seen.json")
    with open(path, "w") as f:
        json.dump({"added_held_out_photos": photos, "share": args.share,
                   "base_weights": args.base_weights, "weights": weights}, f, indent=1)
    digits._background_names = train_names_with(photos)
    print(f"train split with {photos} added ({args.share:.0%} of the draws); weights in {path}", flush=True)
    train.main(train_args + ["--photo-weights", path])


if __name__ == "__main__":
    main()
