"""The main job of `make demo`: train a small model from scratch on scikit-learn's bundled 8x8 digits images (no
download), evaluate it on the held-out 20%, and show the model table.

The score reported is the last epoch's (last.pth) on the held-out images: best.pth is the epoch that scored best on
those same images, so its figure would be chosen on the data it is reported on (issue 28).

The recipe is recipes/digits.yaml; every `mlpvision train` flag can be given here too (e.g. --epochs 5).
"""
from __future__ import annotations

import argparse
import time

HELP = 'train and evaluate a model on the bundled digits images, then show the model table'


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .train import add_arguments as add_train_arguments

    add_train_arguments(p)
    p.set_defaults(recipe='digits', output='runs/demo', overwrite=True)
    p.add_argument('--no-table', action='store_true', help='skip the model table')


def run(args: argparse.Namespace) -> int:
    from mlpvision.engine.inference import validate_checkpoint
    from mlpvision.engine.train import fit, resolve_config
    from mlpvision.model_table import format_rows, model_rows

    from .train import overrides_from_args

    t0 = time.perf_counter()
    cfg = resolve_config(args.recipe, overrides_from_args(args))
    print(f"mlpvision demo: train {cfg.model} from scratch on scikit-learn's 8x8 handwritten digits (1797 images, "
          f"80/20 split) for {cfg.epochs} epochs on the CPU, then evaluate it on the held-out 20%\n", flush=True)
    result = fit(cfg)
    # the last epoch, not the best: the best epoch is selected on these same held-out images
    v = validate_checkpoint(result.last, split='val', workers=0, device=cfg.device,
                            output_dir=result.output_dir)
    elapsed = time.perf_counter() - t0
    r = v.result
    per_class = ', '.join(f'{c}: {a:.0f}%' for c, a in zip(v.loaded.classes, r.per_class, strict=True))
    print(f"""
model:      {result.description}, {result.params:,} parameters
time:       {result.elapsed_s:.0f} s training, {elapsed:.0f} s training and evaluation
test set:   {r.n} held-out images, top-1 {r.top1:.2f}%, top-5 {r.top5:.2f}% (last epoch, {cfg.epochs}; not selected \
on these images)
per class:  {per_class}
checkpoint: {result.last} (last: the figures above, and --resume), {result.best} (epoch {result.best_epoch}, \
best on these same images)
metrics:    {result.metrics_csv}
plot:       {result.plot or '- (matplotlib not installed)'}
confusion:  {v.confusion_png or '- (matplotlib not installed)'}
try:        mlpvision validate {result.last}
            mlpvision predict {result.last} <image files or folders>""")
    if not args.no_table:
        if cfg.threads:  # building every model is CPU work too; same thread count as the training (see the recipe)
            import torch
            torch.set_num_threads(cfg.threads)
        print('\nmodels (parameters and GMACs measured at each default input size):\n', flush=True)
        print(format_rows(model_rows()), end='')
    return 0
