"""The verification figures of docs/export.md: each family's smallest registered variant (random weights), train and
deploy form, exported with both ONNX exporters and torch.export (dynamic batch; dynamic H / W for AS-MLP and
Hire-MLP), as ``mlpvision export`` checks them: max |exported - eager| / max |eager logit| over the checked batch sizes
and input sizes, the size range torch.export found, and the export time (seconds on this machine, one thread, other
jobs running: indicative only).

usage: PYTHONPATH=src python benchmarks/export_check.py OUT.jsonl [NAME ...]
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlpvision.export import export_model, load_model

NAMES = ['as_mlp_tiny', 'hire_mlp_tiny', 'strip_mlp_tiny_light', 'repmlp_cifar_pure', 'repmlp_res50_light_224',
         'repmlpnet_t224', 'resmlp_s12']
DEPLOY = {'hire_mlp_tiny', 'repmlp_cifar_pure', 'repmlp_res50_light_224', 'repmlpnet_t224', 'resmlp_s12'}


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    names = sys.argv[2:] or NAMES
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for deploy in (False, True) if name in DEPLOY else (False,):
                model, _, _ = load_model(name, deploy=deploy)
                any_size = not model.pretrained_cfg.get('fixed_input_size', True)
                for fmt, exporter in (('onnx', 'legacy'), ('onnx', 'dynamo'), ('pt2', None)):
                    start = time.perf_counter()
                    row = dict(name=name, form='deploy' if deploy else 'train', format=fmt,
                               exporter=exporter or 'torch.export')
                    try:
                        r = export_model(model, Path(tmp) / f'm.{fmt}', fmt, dynamic_batch=True,
                                         dynamic_size=any_size, onnx_exporter=exporter)
                        row.update(max_rel_diff=r.max_rel_diff, size_range=r.size_range,
                                   checks=[(c.batch, c.size, c.rel_diff) for c in r.checks])
                    except Exception as e:  # recorded: the table says which exports fail
                        row.update(error=f'{type(e).__name__}: {str(e)[:300]}')
                    row['seconds'] = round(time.perf_counter() - start, 1)
                    with out.open('a') as f:
                        f.write(json.dumps(row) + '\n')
                    print(row, flush=True)


if __name__ == '__main__':
    main()
