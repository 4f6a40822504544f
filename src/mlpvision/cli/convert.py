"""Convert a checkpoint to the Hugging Face Hub folder format timm uses: ``model.safetensors`` + ``config.json``
(architecture, num_classes, class names, model arguments, pretrained cfg). WEIGHTS is an official checkpoint (pass
--model), a timm one, an ``mlpvision train`` checkpoint (best.pth / last.pth: its model, arguments, class names and
preprocessing are kept), a folder of this format, or a pretrained tag (``resmlp_s12.fb_in1k``, downloaded).
--deploy writes the deploy (re-parameterised) form. The folder loads with ``mlpvision.create_model(DIR)`` and, after
``import mlpvision``, ``timm.create_model('local-dir:DIR', pretrained=True)``."""
from __future__ import annotations

import argparse

from mlpvision.errors import UsageError

from ._common import (
    add_model_kwargs_arg,
    add_option,
    add_weights_arg,
    check_model_arg,
    check_writable,
    parse_model_kwargs,
)

HELP = 'convert a checkpoint to a Hugging Face Hub-style folder (model.safetensors + config.json) timm loads'


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_weights_arg(p)
    add_model_kwargs_arg(p)
    add_option(p, 'output', 'output folder (created)', required=True, metavar='DIR')
    add_option(p, 'overwrite', 'replace model.safetensors / config.json already in --output', action='store_true')
    add_option(p, 'deploy', 'write the deploy (re-parameterised) form', action='store_true')


def run(args: argparse.Namespace) -> int:
    check_model_arg(args.model)
    from pathlib import Path

    from mlpvision.hub import CONFIG_NAME, WEIGHTS_NAME, convert

    out_dir = Path(args.output)
    if out_dir.exists() and Path(args.weights).exists() and out_dir.resolve() == Path(args.weights).resolve():
        raise UsageError(f'--output {args.output!r} is the folder being converted; write it elsewhere')
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        check_writable(out_dir / name, args.overwrite)
    out = convert(args.weights, args.output, args.model, deploy=args.deploy,
                  model_kwargs=parse_model_kwargs(args.model_kwargs))
    import json
    cfg = json.loads((out / 'config.json').read_text())
    form = 'deploy' if (cfg.get('model_args') or {}).get('deploy') else 'train'
    labels = len(cfg.get('label_names') or [])
    print(f'{cfg["architecture"]} ({form} form, {cfg["num_classes"]} classes'
          + (f', {labels} class names' if labels else '') + f') -> {out}/model.safetensors, {out}/config.json')
    print(f"load:  mlpvision.create_model({str(out)!r})  or  timm.create_model('local-dir:{out}', pretrained=True) "
          f'after import mlpvision')
    return 0
