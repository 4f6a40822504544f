"""The three tasks through the one run loop (mlpvision.engine.run), as a user runs them: `mlpvision train --task ...`,
stopped by SIGINT and resumed without naming the task, a failing evaluation that keeps the epoch's training, then
`validate` and `predict` on best.pth reading the task from the checkpoint."""
import signal

import pytest
import torch

from mlpvision.dense.coco import make_coco_shapes
from mlpvision.engine.detection import DetectTask, StepWarmupLR
from mlpvision.engine.run import SHARED_OPTIONS
from mlpvision.engine.segmentation import SegmentTask
from mlpvision.engine.train import ClassifyTask
from test_segmentation import make_folder

from conftest import assert_one_error_line, cli

COMMON = ('--epochs', 2, '--threads', 1, '--workers', 0, '--no-plot', '--no-tensorboard', '--no-progress',
          '--deterministic')


def _args(task, tmp_path):
    """(the task's class, its train arguments, the images predict draws from)."""
    data = tmp_path / 'data'
    if task == 'classify':
        return ClassifyTask, ('--task', 'classify', '--dataset', 'fake', '--fake-size', 16, '--fake-classes', 4,
                              '--img-size', 32, '--model', 'resmlp_s12', '--model-kwargs', 'embed_dim=16', 'depth=1',
                              'patch_size=8', '--batch-size', 8), None
    if task == 'segment':
        make_folder(data, splits=(('train', 8), ('val', 2)))
        return SegmentTask, ('--task', 'segment', '--backbone', 'resnet10t', '--dataset', 'folder', '--data-dir', data,
                             '--num-classes', 3, '--base-size', 32, '--crop', 32, 32, '--batch-size', 4,
                             '--channels', 8, '--aux-channels', 8, '--warmup-steps', 1, '--lr', 1e-3), \
            data / 'val' / 'images'
    make_coco_shapes(data / 'train', 8, (64, 80), seed=0)
    make_coco_shapes(data / 'val', 2, (64, 80), seed=1)
    return DetectTask, ('--task', 'detect', '--model', 'maskrcnn', '--backbone', 'as_mlp_tiny', '--model-kwargs',
                        'depths=(1,1,1,1)', 'embed_dim=16', '--data-dir', data, '--min-size', 64, '--max-size', 80,
                        '--eval-min-size', 64, '--box-batch-size-per-image', 32, '--batch-size', 4,
                        '--warmup-steps', 1), data / 'val' / 'images'


@pytest.mark.parametrize('task', ['classify', 'segment', 'detect'])
def test_one_loop_for_every_task(task, tmp_path, capsys, monkeypatch):
    cls, args, images = _args(task, tmp_path)
    rc, out, err = cli(capsys, 'train', *args, *COMMON, '--output', tmp_path / 'a')
    assert rc == 0, err
    straight = torch.load(tmp_path / 'a' / 'last.pth', weights_only=True)
    assert straight['mlpvision']['task'] == {'classify': 'classification', 'segment': 'segmentation',
                                             'detect': 'detection'}[task]
    assert (straight['epoch'], straight['global_step']) == (2, 4)

    # SIGINT during the first step of epoch 2: saved at the step boundary, exit status 130, the resume command printed
    real_loss = cls.loss

    def interrupt(self, run, batch):
        if run.state.global_step == 2:
            signal.raise_signal(signal.SIGINT)
        return real_loss(self, run, batch)

    monkeypatch.setattr(cls, 'loss', interrupt)
    rc, _, err = cli(capsys, 'train', *args, *COMMON, '--output', tmp_path / 'b')
    assert rc == 130 and f'Resume with: mlpvision train --resume auto --output {tmp_path / "b"}' in err
    monkeypatch.setattr(cls, 'loss', real_loss)
    stopped = torch.load(tmp_path / 'b' / 'last.pth', weights_only=True)
    assert (stopped['epoch'], stopped['step_in_epoch']) == (1, 1)
    rc, _, err = cli(capsys, 'train', '--resume', 'auto', '--output', tmp_path / 'b')  # the task from the checkpoint
    assert rc == 0, err
    resumed = torch.load(tmp_path / 'b' / 'last.pth', weights_only=True)
    for k, v in straight['model'].items():
        assert torch.equal(resumed['model'][k], v), k
    rows = (tmp_path / 'b' / 'metrics.csv').read_text().splitlines()
    assert [r.split(',')[0] for r in rows[1:]] == ['1', '2']
    assert (tmp_path / 'a' / 'metrics.csv').read_text().splitlines()[0] == rows[0]

    # an evaluation that fails: the epoch's training is already in last.pth, and a resume evaluates it
    real_eval = cls.evaluate

    def broken(self, run, model, desc):
        raise RuntimeError('evaluation broke')

    monkeypatch.setattr(cls, 'evaluate', broken)
    with pytest.raises(RuntimeError, match='evaluation broke'):
        cli(capsys, 'train', *args, *COMMON, '--output', tmp_path / 'c')
    monkeypatch.setattr(cls, 'evaluate', real_eval)
    kept = torch.load(tmp_path / 'c' / 'last.pth', weights_only=True)
    assert (kept['epoch'], kept['step_in_epoch'], kept['global_step']) == (0, 2, 2)
    rc, _, err = cli(capsys, 'train', '--resume', 'auto', '--output', tmp_path / 'c')
    assert rc == 0, err
    again = torch.load(tmp_path / 'c' / 'last.pth', weights_only=True)
    for k, v in straight['model'].items():
        assert torch.equal(again['model'][k], v), k

    # validate and predict read the task from best.pth
    best = tmp_path / 'a' / 'best.pth'
    rc, out, err = cli(capsys, 'validate', best)
    assert rc == 0, err
    assert {'classify': 'top-1', 'segment': 'mIoU', 'detect': 'box AP'}[task] in out
    if images is not None:
        rc, out, err = cli(capsys, 'predict', best, images, '-o', tmp_path / 'pred')
        assert rc == 0, err
        drawn = sorted(p.name for p in (tmp_path / 'pred').iterdir())
        assert drawn and all(n.endswith('.png') for n in drawn), drawn
    if task == 'detect':  # categories matched by name: the same ids under other names are refused in one line
        import json
        import shutil
        other = tmp_path / 'other'
        shutil.copytree(tmp_path / 'data', other)
        ann = other / 'val' / 'annotations.json'
        coco = json.loads(ann.read_text())
        for c in coco['categories']:
            c['name'] = 'renamed_' + c['name']
        ann.write_text(json.dumps(coco))
        rc, _, err = cli(capsys, 'validate', best, '--data-dir', other)
        assert_one_error_line(rc, err, 'validate', 'renamed_')


def test_every_task_config_has_the_options_the_loop_reads():
    import dataclasses

    from mlpvision.engine.config import TrainConfig
    from mlpvision.engine.detection import DetConfig
    from mlpvision.engine.segmentation import SegConfig

    for cfg in (TrainConfig, SegConfig, DetConfig):
        names = {f.name for f in dataclasses.fields(cfg)}
        assert set(SHARED_OPTIONS) <= names, (cfg.__name__, set(SHARED_OPTIONS) - names)


def test_an_option_of_another_task_is_refused(capsys, tmp_path):
    rc, _, err = cli(capsys, 'train', '--task', 'classify', '--crop', 32, 32, '--output', tmp_path / 'x')
    assert_one_error_line(rc, err, 'train', '--crop is an option of --task segment, not of --task classify')
    rc, _, err = cli(capsys, 'train', '--task', 'segment', '--mixup', 0.8, '--output', tmp_path / 'x')
    assert_one_error_line(rc, err, 'train', '--mixup is an option of --task classify')
    rc, _, err = cli(capsys, 'train', '--task', 'classify', '--recipe', 'maskrcnn_pennfudan_cpu')
    assert_one_error_line(rc, err, 'train', 'the recipe is a detect run')


def test_detection_schedule_is_mmdet_step_with_linear_warmup():
    from mlpvision.engine.detection import DetConfig

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = StepWarmupLR(opt, DetConfig(lr=1e-4, warmup_steps=500, warmup_ratio=0.001, lr_steps=[8, 11]), 100)
    assert sched.rate(0) == pytest.approx(1e-7)  # 0.001 x lr
    assert sched.rate(250) == pytest.approx(1e-4 * (1 - 0.5 * 0.999))
    assert sched.rate(799) == pytest.approx(1e-4) and sched.rate(800) == pytest.approx(1e-5)
    assert sched.rate(1100) == pytest.approx(1e-6)
    sched.step_update(800)
    assert opt.param_groups[0]['lr'] == pytest.approx(1e-5)


def test_detection_recipes_hold_the_official_config():
    from mlpvision.engine.config import list_recipes, load_recipe, recipe_task
    from mlpvision.engine.detection import DetConfig, resolve_det_config

    detect = [r for r in list_recipes() if recipe_task(r) == 'detect']
    assert {'maskrcnn_asmlp_coco_1x', 'maskrcnn_pennfudan_cpu'} <= set(detect)
    for name in detect:
        opts = {k: v for k, v in load_recipe(name, DetConfig).items() if k != 'recipe'}
        resolve_det_config(dict(opts, data_dir='DATA')).validate()
    coco = resolve_det_config(dict({k: v for k, v in load_recipe('maskrcnn_asmlp_coco_1x', DetConfig).items()
                                    if k != 'recipe'}, data_dir='DATA'))
    # svip-lab/AS-MLP-Object-Detection@a8d9ef9, mask_rcnn_asmlp_tiny_..._adamw_1x_coco.py and schedule_1x.py
    assert (coco.lr, coco.weight_decay, coco.epochs, coco.lr_steps, coco.warmup_steps, coco.warmup_ratio) == (
        1e-4, 0.05, 12, [8, 11], 500, 0.001)
    assert coco.min_size == list(range(480, 801, 32)) and coco.max_size == 1333 and coco.batch_size == 2
    assert coco.model_kwargs == {'drop_path_rate': 0.2} and coco.backbone == 'as_mlp_tiny'


@pytest.mark.parametrize('breakage,fragment', [
    ('json', 'annotations.json'),
    ('box', 'outside'),
    ('category', 'category'),
    ('image', 'are not in'),
])
def test_bad_detection_data_gives_one_line_naming_the_file(breakage, fragment, tmp_path, capsys):
    import json
    _, args, _ = _args('detect', tmp_path)
    ann = tmp_path / 'data' / 'train' / 'annotations.json'
    coco = json.loads(ann.read_text())
    if breakage == 'json':
        ann.write_text(ann.read_text()[:-5])
    else:
        if breakage == 'box':
            coco['annotations'][0]['bbox'] = [70.0, 50.0, 40.0, 40.0]  # past the 80 x 64 image
        elif breakage == 'category':
            coco['annotations'][0]['category_id'] = 9
        else:
            (tmp_path / 'data' / 'train' / 'images' / coco['images'][0]['file_name']).unlink()
        ann.write_text(json.dumps(coco))
    rc, _, err = cli(capsys, 'train', *args, *COMMON, '--output', tmp_path / 'run')
    assert_one_error_line(rc, err, 'train', fragment)
    if breakage != 'image':
        assert 'annotations.json' in err
