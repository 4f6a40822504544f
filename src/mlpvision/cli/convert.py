"""Convert a checkpoint to the Hugging Face Hub folder format timm uses: ``model.safetensors`` + ``config.json``
(architecture, num_classes, class names, model arguments, pretrained cfg). SRC is an official checkpoint (pass
--model), a timm one, an ``mlpvision train`` checkpoint (best.pth / last.pth: its model, arguments, class names and
preprocessing are kept), a folder of this format, or a pretrained tag (``resmlp_s12.fb_in1k``, downloaded).
--deploy writes the deploy (re-parameterised) form. The folder loads with ``mlpvision.create_model(DIR)`` and, after
``import mlpvision``, ``timm.create_model('local-dir:DIR', pretrained=True)``."""
from __future__ import annotations

import argparse

from ._common import add_model_kwargs_arg, check_model_arg, parse_model_kwargs

HELP = 'convert a checkpoint to a Hugging Face Hub-style folder (model.safetensors + config.json) timm loads'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('src', metavar='SRC', help='checkpoint file, model folder, or a pretrained tag (NAME.TAG)')
    p.add_argument('--model', help='model name; needed for official checkpoints (ours record it)')
    add_model_kwargs_arg(p)
    p.add_argument('--out', '-o', required=True, metavar='DIR', help='output folder (created; files replaced)')
    p.add_argument('--deploy', action='store_true', help='write the deploy (re-parameterised) form')


def run(args: argparse.Namespace) -> int:
    check_model_arg(args.model)
    from mlpvision.hub import convert

    out = convert(args.src, args.out, args.model, deploy=args.deploy,
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
