"""Distributed data parallel on CPU: `torchrun --nproc_per_node=2` (gloo) trains one model whose replicas stay
identical, each process reading its own half of every epoch."""
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).parents[1]

SCRIPT = '''
import os, sys, torch
from mlpvision.engine import fit, make_config
cfg = make_config(dict(
    dataset='fake', fake_size=32, fake_classes=4, img_size=16, model='resmlp_s12',
    model_kwargs=dict(embed_dim=16, depth=2, patch_size=4), batch_size=4, epochs=2, workers=0, mixup=0.8, cutmix=1.0,
    drop_path_rate=0.1, model_ema=True, clip_grad=1.0, output=sys.argv[1], progress=False, tensorboard=False,
    plot=False, threads=1))
result = fit(cfg)
rank = int(os.environ['RANK'])
torch.save({'model': result.model.state_dict(), 'world': int(os.environ['WORLD_SIZE']),
            'local': os.environ['LOCAL_RANK']}, os.path.join(sys.argv[1], f'rank{rank}.pt'))
'''


def test_torchrun_two_processes_keep_replicas_identical(tmp_path):
    script = tmp_path / 'ddp_train.py'
    script.write_text(SCRIPT)
    out = tmp_path / 'run'
    env = dict(os.environ, PYTHONPATH=str(ROOT / 'src'), OMP_WAIT_POLICY='PASSIVE', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(out / 'rank0.pt', weights_only=True)
    r1 = torch.load(out / 'rank1.pt', weights_only=True)
    assert (r0['world'], r0['local'], r1['local']) == (2, '0', '1')
    assert r0['model'].keys() == r1['model'].keys()
    assert all(torch.equal(r0['model'][k], r1['model'][k]) for k in r0['model'])
    # the primary's checkpoint holds the same weights; each process did 32 / 2 / 4 = 4 steps per epoch
    ckpt = torch.load(out / 'last.pth', weights_only=True)
    assert all(torch.equal(ckpt['model'][k], r0['model'][k]) for k in r0['model'])
    assert ckpt['global_step'] == 8 and len(ckpt['rng_per_rank']) == 2
    assert not torch.equal(ckpt['rng_per_rank'][0]['torch'], ckpt['rng_per_rank'][1]['torch'])
    resolved = yaml.safe_load((out / 'config.yaml').read_text())['resolved']
    assert resolved['world_size'] == 2 and resolved['global_batch_size'] == 8 and resolved['steps_per_epoch'] == 4
