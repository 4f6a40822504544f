"""Knowledge distillation (--teacher, --distillation soft|hard): DeiT's losses through the one head, a frozen teacher in
eval mode, exact resumption, config.yaml, and the bad inputs each a one-line error (exit 2 at the CLI)."""
import csv
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mlpvision._checkpoint import save_state_dict
from mlpvision.cli.main import main
from mlpvision.data.datasets import DatasetError, build_dataset
from mlpvision.engine import fit, make_config, resolve_config
from mlpvision.engine.distill import Distiller, build_teacher, distillation_loss
from mlpvision.engine.distributed import init_distributed
from mlpvision.engine.train import build_context, train_one_epoch
from mlpvision.errors import UsageError
from test_train import TINY, _fit_until_saved_at_step


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    """A tiny mlpvision teacher trained for one epoch on the same fake data (4 classes)."""
    out = tmp_path_factory.mktemp('teacher') / 'run'
    result = fit(make_config(dict(TINY, model_kwargs=dict(embed_dim=24, depth=1, patch_size=8), output=str(out))))
    return str(result.last)


def distil(tmp_path, teacher_ckpt, name='run', **kw):
    return make_config(dict(TINY, output=str(tmp_path / name), teacher='resmlp_s12', teacher_checkpoint=teacher_ckpt,
                            **dict(dict(distillation='soft', distillation_tau=2.0), **kw)))


def test_losses_equal_the_formulas_on_a_hand_made_batch():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    t = torch.tensor([[1.0, 3.0, 0.0], [0.0, -2.0, 4.0]])
    base, alpha, tau = torch.tensor(1.25), 0.3, 2.0

    def softmax(row, temp):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    kl = 0.0
    for sr, tr in zip(s.tolist(), t.tolist(), strict=True):  # KL(teacher || student) per image, summed over classes
        p, q = softmax(tr, tau), softmax(sr, tau)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    soft = (1 - alpha) * 1.25 + alpha * tau ** 2 * kl / 2  # batch mean, times tau^2
    assert float(distillation_loss(base, s, t, 'soft', alpha, tau)) == pytest.approx(soft, rel=1e-6)
    # hard: cross-entropy to the teacher's top class (1 for the first image, 2 for the second), temperature unused
    ce = (-math.log(softmax(s[0].tolist(), 1)[1]) - math.log(softmax(s[1].tolist(), 1)[2])) / 2
    assert float(distillation_loss(base, s, t, 'hard', alpha, tau)) == pytest.approx((1 - alpha) * 1.25 + alpha * ce,
                                                                                      rel=1e-6)
    # alpha 0: the base loss alone; a teacher equal to the student: no soft term
    assert float(distillation_loss(base, s, t, 'soft', 0.0, tau)) == pytest.approx(1.25)
    assert float(distillation_loss(base, s, s, 'soft', 1.0, tau)) == pytest.approx(0.0, abs=1e-7)


def test_tiny_distillation_run_with_mixup_trains_checkpoints_and_records_the_teacher(tmp_path, teacher_ckpt):
    result = fit(distil(tmp_path, teacher_ckpt, epochs=2, mixup=0.8, cutmix=1.0))
    rows = list(csv.DictReader(open(result.metrics_csv)))
    assert [r['epoch'] for r in rows] == ['1', '2'] and all(math.isfinite(float(r['train_loss'])) for r in rows)
    saved = yaml.safe_load(result.config_yaml.read_text())
    assert (saved['teacher'], saved['teacher_checkpoint'], saved['distillation']) == ('resmlp_s12', teacher_ckpt,
                                                                                       'soft')
    assert saved['distillation_alpha'] == 0.5 and saved['distillation_tau'] == 2.0
    assert saved['resolved']['teacher'].startswith('resmlp_s12 (embed_dim=24, depth=1, patch_size=8;')
    last = torch.load(result.last, weights_only=True)
    # the checkpoint holds the student only: the same keys and shapes as the student model
    assert last['model'].keys() == result.model.state_dict().keys()
    assert last['model']['head.weight'].shape == (4, 16)


def test_teacher_stays_frozen_in_eval_mode_and_sees_every_batch(tmp_path, teacher_ckpt, monkeypatch):
    cfg = distil(tmp_path, teacher_ckpt, distillation='hard', mixup=0.8)
    threads = torch.get_num_threads()
    try:
        ctx = build_context(cfg, init_distributed(cfg.device), progress=False)
        teacher = ctx.task.distiller.teacher
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        student_before = {k: v.clone() for k, v in ctx.state.model.state_dict().items()}
        seen = []
        call = Distiller.__call__

        def spy(self, x, logits, base):
            seen.append((x.shape, self.teacher.training, torch.is_grad_enabled()))
            return call(self, x, logits, base)

        monkeypatch.setattr(Distiller, '__call__', spy)
        teacher.train()  # even a teacher someone switched to training mode runs in eval mode
        train_one_epoch(ctx)
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == ctx.steps == 4 and all(shape == (4, 3, 32, 32) for shape, _, _ in seen)
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(student_before[k], v) for k, v in ctx.state.model.state_dict().items())
    assert not any(p is q for p in teacher.parameters() for g in ctx.state.optimizer.param_groups
                   for q in g['params'])


def test_distillation_resume_mid_epoch_continues_exactly(tmp_path, teacher_ckpt, monkeypatch):
    kw = dict(epochs=2, mixup=0.8, drop_path_rate=0.1, deterministic=True, checkpoint_every_steps=3)
    full = fit(distil(tmp_path, teacher_ckpt, 'a', **kw))
    _fit_until_saved_at_step(distil(tmp_path, teacher_ckpt, 'b', **kw), 6, monkeypatch)
    resumed = fit(resolve_config(None, dict(resume=str(tmp_path / 'b' / 'last.pth'))))
    assert resumed.config_yaml.is_file() and yaml.safe_load(resumed.config_yaml.read_text())['teacher'] == 'resmlp_s12'
    a, b = (torch.load(r.last, weights_only=True) for r in (full, resumed))
    assert a['global_step'] == b['global_step'] == 8
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_a_timm_teacher_from_a_state_dict(tmp_path):
    import timm
    net = timm.create_model('test_resnet', num_classes=4)
    save_state_dict(net, tmp_path / 't.safetensors')
    rng = torch.get_rng_state()
    teacher, text = build_teacher('test_resnet', str(tmp_path / 't.safetensors'), ['a', 'b', 'c', 'd'], 3, (32, 32),
                                  torch.device('cpu'))
    assert not teacher.training and text.startswith('test_resnet (')
    assert torch.equal(torch.get_rng_state(), rng)  # building it leaves the run's random stream as it was
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher(x), net.eval()(x))
    save_state_dict(timm.create_model('test_resnet', num_classes=10), tmp_path / 't10.safetensors')
    with pytest.raises(UsageError, match=r"teacher test_resnet from '.*t10.safetensors' predicts 10 classes but the "
                                         r"data set has 4"):
        build_teacher('test_resnet', str(tmp_path / 't10.safetensors'), list('abcd'), 3, (32, 32),
                      torch.device('cpu'))


def test_a_timm_convnet_trained_by_mlpvision_teaches_and_validates(tmp_path):
    # issue 13's teacher: a timm convnet trained with `mlpvision train` first, then named by its own checkpoint
    from mlpvision.engine.inference import load_for_inference
    teacher_run = fit(make_config(dict(TINY, model='test_resnet', model_kwargs={}, output=str(tmp_path / 't'))))
    saved = torch.load(teacher_run.last, map_location='cpu', weights_only=True)['mlpvision']
    assert saved['model_name'] == 'test_resnet' and saved['model_kwargs'] == dict(num_classes=4, in_chans=3)
    teacher, _ = build_teacher('test_resnet', str(teacher_run.last), list(saved['classes']), 3, (32, 32),
                               torch.device('cpu'))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher(x), teacher_run.model.eval()(x))
    loaded = load_for_inference(teacher_run.best)
    assert loaded.form == 'train' and torch.equal(loaded.model.eval()(x), teacher(x))
    student = fit(make_config(dict(TINY, output=str(tmp_path / 's'), teacher='test_resnet', distillation='hard',
                                   teacher_checkpoint=str(teacher_run.last))))
    assert math.isfinite(float(list(csv.DictReader(open(student.metrics_csv)))[0]['train_loss']))
    with pytest.raises(UsageError, match=r"unknown model 'resnet19'; closest: .*resnet18.* \(any mlpvision or timm"):
        fit(make_config(dict(TINY, model='resnet19', model_kwargs={}, output=str(tmp_path / 'x'))))


def _cli_error(args, capsys):
    rc = main(['train', *args, '--no-tensorboard', '--no-plot', '--no-progress'])
    lines = capsys.readouterr().err.strip().splitlines()
    return rc, lines[-1]


def _cli_tiny(tmp_path):
    return ['--dataset', 'fake', '--fake-size', '16', '--fake-classes', '4', '--img-size', '32', '--model',
            'resmlp_s12', '--model-kwargs', 'embed_dim=16', 'depth=1', 'patch_size=8', '--batch-size', '4',
            '--epochs', '1', '--workers', '0', '--threads', '1', '--output', str(tmp_path / 'run')]


def test_bad_teacher_inputs_are_one_line_errors_at_the_cli(tmp_path, teacher_ckpt, capsys):
    tiny = _cli_tiny(tmp_path)
    rc, err = _cli_error([*tiny, '--distillation', 'soft'], capsys)
    assert rc == 2 and err == ('mlpvision train: error: --distillation soft needs a teacher: pass --teacher MODEL and '
                               '--teacher-checkpoint FILE')
    rc, err = _cli_error([*tiny, '--distillation', 'hard', '--teacher', 'resmlp_s13', '--teacher-checkpoint',
                          teacher_ckpt], capsys)
    assert rc == 2 and err.startswith("mlpvision train: error: unknown teacher model 'resmlp_s13'; closest: ")
    assert 'resmlp_s12' in err
    # the teacher was trained on 4 classes, this data set has 6
    tiny6 = [a if a != '4' or tiny[i - 1] != '--fake-classes' else '6' for i, a in enumerate(tiny)]
    rc, err = _cli_error([*tiny6, '--distillation', 'soft', '--teacher', 'resmlp_s12', '--teacher-checkpoint',
                          teacher_ckpt], capsys)
    assert rc == 2 and err == (f"mlpvision train: error: teacher resmlp_s12 from {teacher_ckpt!r} predicts 4 classes "
                               f"but the data set has 6; distil from a teacher trained (or fine-tuned) on these "
                               f"classes")
    rc, err = _cli_error([*tiny, '--teacher', 'resmlp_s12'], capsys)
    assert rc == 2 and err.endswith('--teacher is given but --distillation is none; pass --distillation soft or hard '
                                    'to distil from the teacher, or drop --teacher')
    rc, err = _cli_error([*tiny, '--distillation', 'soft', '--teacher', 'as_mlp_tiny', '--teacher-checkpoint',
                          teacher_ckpt], capsys)
    assert rc == 2 and err.endswith(f"teacher checkpoint {teacher_ckpt!r} is a resmlp_s12, not a as_mlp_tiny; pass "
                                    f"--teacher resmlp_s12")


def test_validate_alpha_and_tau():
    with pytest.raises(UsageError, match='distillation-alpha must be between 0 and 1, got 1.5'):
        make_config(dict(distillation='soft', teacher='resmlp_s12', teacher_checkpoint='t.pth', distillation_alpha=1.5))
    with pytest.raises(UsageError, match='distillation-tau must be positive, got 0.0'):
        make_config(dict(distillation='soft', teacher='resmlp_s12', teacher_checkpoint='t.pth', distillation_tau=0))
    with pytest.raises(UsageError, match="unknown distillation 'kd'; choose one of none, soft, hard"):
        make_config(dict(distillation='kd'))
    with pytest.raises(UsageError, match='has no weights: pass --teacher-checkpoint FILE'):
        make_config(dict(distillation='hard', teacher='resmlp_s12'))


def _folder(root, classes):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / '0.png')


def test_val_split_with_classes_the_train_split_lacks_is_named(tmp_path, capsys):
    _folder(tmp_path / 'train', ['cat', 'dog'])
    _folder(tmp_path / 'test', ['cat', 'cow', 'dog', 'emu'])
    with pytest.raises(DatasetError, match=r"the 'test' split of '.*' has classes the 'train' split lacks: 'cow', "
                                           r"'emu'; remove them or add them to train/"):
        build_dataset('imagefolder', 'val', str(tmp_path), val_folder='test')
    rc, err = _cli_error(['--dataset', 'imagefolder', '--data-dir', str(tmp_path), '--val-split', 'test',
                          '--model', 'resmlp_s12', '--model-kwargs', 'embed_dim=16', 'depth=1', 'patch_size=8',
                          '--img-size', '32', '--workers', '0', '--threads', '1', '--output', str(tmp_path / 'run')],
                         capsys)
    assert rc == 2 and "has classes the 'train' split lacks: 'cow', 'emu'" in err
    # a validation split with fewer classes keeps the training split's indices
    _folder(tmp_path / 'val', ['dog'])
    info = build_dataset('imagefolder', 'val', str(tmp_path))
    assert info.classes == ['cat', 'dog'] and info.dataset.targets == [1]
