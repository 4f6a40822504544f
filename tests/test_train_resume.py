"""A training process killed with SIGKILL mid-epoch and resumed from its last step checkpoint ends with exactly the
weights, EMA and optimizer state of an uninterrupted run."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]

# 64 synthetic images in batches of 8: 8 steps per epoch, a step checkpoint every 3 steps; every RNG consumer is on
ARGS = ['train', '--dataset', 'fake', '--fake-size', '64', '--fake-classes', '4', '--img-size', '16',
        '--model', 'resmlp_s12', '--model-kwargs', 'embed_dim=16', 'depth=2', 'patch_size=4', '--batch-size', '8',
        '--epochs', '3', '--workers', '0', '--deterministic', '--checkpoint-every-steps', '3', '--mixup', '0.8',
        '--cutmix', '1.0', '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25', '--drop-path-rate', '0.1',
        '--model-ema', '--no-progress', '--no-tensorboard', '--no-plot', '--threads', '1']


def _cmd(*extra):
    return [sys.executable, '-m', 'mlpvision.cli.main', *ARGS, *map(str, extra)]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT / 'src'), OMP_WAIT_POLICY='PASSIVE')


def _tensors(obj, prefix=''):
    """Every tensor in a nested checkpoint, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f'{prefix}/{k}')
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f'{prefix}/{i}')


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    full = subprocess.run(_cmd('--output', tmp_path / 'full'), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr

    # kill as soon as the step-12 checkpoint is written (epoch 2, step 4 of 8)
    proc = subprocess.Popen(_cmd('--output', tmp_path / 'killed'), env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if 'checkpoint saved at step 12 ' in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed = torch.load(tmp_path / 'killed' / 'last.pth', weights_only=True)
    assert killed['epoch'] == 1 and 0 < killed['step_in_epoch'] < 8, 'the kill should land mid-epoch'

    resumed = subprocess.run([sys.executable, '-m', 'mlpvision.cli.main', 'train', '--resume',
                              str(tmp_path / 'killed' / 'last.pth'), '--no-progress'],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert 'resumed from' in resumed.stderr

    a = torch.load(tmp_path / 'full' / 'last.pth', weights_only=True)
    b = torch.load(tmp_path / 'killed' / 'last.pth', weights_only=True)
    assert a['global_step'] == b['global_step'] == 24
    ta, tb = dict(_tensors({k: a[k] for k in ('model', 'ema', 'optimizer')})), \
        dict(_tensors({k: b[k] for k in ('model', 'ema', 'optimizer')}))
    assert ta.keys() == tb.keys() and len(ta) > 50
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'
    rows = (tmp_path / 'killed' / 'metrics.csv').read_text().splitlines()
    assert [r.split(',')[0] for r in rows[1:]] == ['1', '2', '3']


def test_resume_auto_starts_or_continues_the_run(tmp_path, capsys):
    from mlpvision.cli.main import main
    argv = ['train', '--dataset', 'fake', '--fake-size', '16', '--img-size', '16', '--model', 'resmlp_s12',
            '--model-kwargs', 'embed_dim=8', 'depth=1', 'patch_size=8', '--batch-size', '8', '--workers', '0',
            '--no-progress', '--no-tensorboard', '--no-plot', '--resume', 'auto', '--output', str(tmp_path / 'run')]
    assert main([*argv, '--epochs', '1']) == 0  # nothing to resume yet: a new run
    assert torch.load(tmp_path / 'run' / 'last.pth', weights_only=True)['epoch'] == 1
    assert main([*argv, '--epochs', '2']) == 0  # continued for one more epoch
    assert torch.load(tmp_path / 'run' / 'last.pth', weights_only=True)['global_step'] == 4
