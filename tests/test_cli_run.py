"""A newcomer's first real run (issue 17): the console script's first stage (help without torch, OpenMP's wait
policy), the thread split, interrupting and resuming a real training process, and what `train` says at start."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import _mlpvision_cli
from mlpvision.cli.main import build_parser, main
from mlpvision.engine.config import make_config
from mlpvision.engine.train import _StopRequest, resolve_config, thread_split

ROOT = Path(__file__).parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / 'src'))
ENV.pop('OMP_WAIT_POLICY', None)
MODEL = ['--model', 'resmlp_s12', '--model-kwargs', 'embed_dim=16', 'depth=1', 'patch_size=8', '--img-size', '32']


def _python(code: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env or ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- the first stage ----------------------------------------------------------------------------------------------
def test_help_and_version_do_not_import_torch():
    out = _python('import sys, _mlpvision_cli\n'
                  'for argv in (["--help"], ["--version"]):\n'
                  '    try:\n'
                  '        _mlpvision_cli.main(argv)\n'
                  '    except SystemExit as e:\n'
                  '        assert e.code == 0, e.code\n'
                  'print("imported:", sorted(m for m in ("torch", "timm", "mlpvision") if m in sys.modules))')
    assert 'usage: mlpvision' in out and 'mlpvision 0.1.0' in out
    assert out.strip().splitlines()[-1] == 'imported: []', out


def test_fast_help_is_the_full_parsers_help(capsys):
    with pytest.raises(SystemExit):
        _mlpvision_cli.main(['--help'])
    assert capsys.readouterr().out == build_parser().format_help()
    for name, (module, help_) in _mlpvision_cli.SUBCOMMANDS.items():
        assert __import__(f'mlpvision.cli.{module}', fromlist=['HELP']).HELP == help_, name


def test_wait_policy_is_set_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY when torch's runtime loads: the first stage sets it before `import torch`,
    and keeps a value the user set."""
    probe = ('import os, sys, _mlpvision_cli\n'
             'seen = []\n'
             'class Probe:\n'
             '    def find_spec(self, name, path=None, target=None):\n'
             '        if name == "torch" and not seen:\n'
             '            seen.append(os.environ.get("OMP_WAIT_POLICY"))\n'
             'sys.meta_path.insert(0, Probe())\n'
             'assert _mlpvision_cli.main(["models", "--names-only", "resmlp_s12"]) == 0\n'
             'print("policy at import torch:", seen[0])')
    assert out_line(_python(probe)) == 'policy at import torch: PASSIVE'
    assert out_line(_python(probe, dict(ENV, OMP_WAIT_POLICY='ACTIVE'))) == 'policy at import torch: ACTIVE'


def out_line(out: str) -> str:
    return out.strip().splitlines()[-1]


# -- threads ------------------------------------------------------------------------------------------------------
def test_thread_split():
    def split(cores, env=None, **kw):
        return thread_split(make_config(None, None, kw), cores=cores, env=env or {})[:2]

    assert split(2) == (1, 2)  # the default 2 workers take the 2 cores' share: one compute thread
    assert split(2, workers=0) == (2, 0)
    assert split(2, workers=2, data_in_memory=True, train_crop='pad', color_jitter=0.0) == (2, 0)  # no loaders
    assert split(16, workers=4) == (12, 4)
    assert split(16, {'LOCAL_WORLD_SIZE': '4'}, workers=2) == (2, 2)  # 4 cores per process, 2 of them loaders
    assert split(1, workers=8) == (1, 8)  # at least one
    assert split(16, threads=3) == (3, 2)
    cfg = make_config(None, None, {})
    assert thread_split(cfg, cores=8, env={'OMP_NUM_THREADS': '1'})[::3] == (torch.get_num_threads(),
                                                                             'OMP_NUM_THREADS')


# -- interrupts and resume ----------------------------------------------------------------------------------------
def test_second_sigint_exits_at_once():
    # what was installed before: Python's default_int_handler, or SIG_IGN where the suite was started in the
    # background of a non-interactive shell (as CI runs it), which starts processes with SIGINT ignored
    before = signal.getsignal(signal.SIGINT)
    with _StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first one only asks
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes; never reached
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_saves_and_resumes(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group (a loader worker too): the run saves last.pth at the
    next step boundary, says how to resume, exits 130; the printed command resumes it (with --epochs shortened)."""
    pytest.importorskip('matplotlib')
    out = tmp_path / 'run'
    argv = ['train', '--dataset', 'fake', '--fake-size', '16', '--fake-classes', '4', '--batch-size', '4',
            '--epochs', '1000', '--output', str(out), *MODEL, '--workers', '1', '--threads', '1',
            '--no-tensorboard', '--no-progress', '--log-interval', '1']
    proc = subprocess.Popen([sys.executable, '-m', '_mlpvision_cli', *argv], stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:  # until the first epoch is logged: curves.png must be there by then
            lines.append(line)
            if line.startswith('epoch 1/1000  train loss'):
                os.killpg(proc.pid, signal.SIGINT)
                break
        lines += proc.stderr.readlines()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = ''.join(lines)
    assert rc == 130, err
    assert 'threads: 1 compute, 1 loader process (of ' in err and '; --threads)' in err
    assert 'Traceback' not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith('mlpvision train: interrupted: stopped by SIGINT at epoch '), err
    command = last.split('Resume with: ')[1]
    assert command == f'mlpvision train --resume auto --output {out}'
    assert (out / 'last.pth').is_file() and (out / 'curves.png').is_file()
    saved = torch.load(out / 'last.pth', weights_only=True)
    assert saved['global_step'] >= 4  # at least the first epoch

    resumed = subprocess.run([sys.executable, '-m', '_mlpvision_cli', *command.split()[1:], '--epochs',
                              str(saved['epoch'] + 2)], capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f'resumed from {out / "last.pth"}: epoch {saved["epoch"] + 1}, step {saved["step_in_epoch"]}' \
        in resumed.stderr
    rows = (out / 'metrics.csv').read_text().splitlines()[1:]
    assert [int(r.split(',')[0]) for r in rows] == list(range(1, saved['epoch'] + 3))
    resolved = yaml.safe_load((out / 'config.yaml').read_text())['resolved']
    assert '--epochs 1000' in resolved['command'] and '--resume' not in resolved['command']
    assert len(resolved['resume_commands']) == 1 and '--resume auto' in resolved['resume_commands'][0]


def test_resume_auto_with_nothing_to_resume_says_so(tmp_path, caplog):
    with caplog.at_level('WARNING', logger='mlpvision.train'):
        cfg = resolve_config(None, dict(resume='auto', output=str(tmp_path / 'new'), epochs=3))
    assert cfg.resume is None and cfg.epochs == 3
    assert f'--resume auto: nothing to resume (no {tmp_path / "new" / "last.pth"}); starting the run the other ' \
           f'options describe' in caplog.text


def test_bare_train_says_what_it_will_do(capsys, monkeypatch):
    import mlpvision.engine.train as engine

    def no_fit(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, 'fit', no_fit)
    assert main(['train']) == 130
    err = capsys.readouterr().err
    assert err.startswith('no --recipe and no options given: training the defaults, resmlp_s12 on digits for 300 '
                          'epochs at 224 px (a paper-length run). Pick a recipe with --recipe NAME'), err
    assert main(['train', '--epochs', '1']) == 130  # any option: no notice
    assert 'no --recipe' not in capsys.readouterr().err


# -- defaults that are said ---------------------------------------------------------------------------------------
def test_train_help_shows_every_default():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices['train']
    missing = [a.option_strings[-1] for a in train._actions
               if a.option_strings and a.dest not in ('help', 'list_recipes') and 'default' not in (a.help or '')]
    assert missing == []
    text = train.format_help()
    for said in ('colour jitter strength (0: off; off anyway with RandAugment) (default: 0.4)',
                 'label smoothing (default: 0.1)', '(default: --plot)', '(default: --no-data-in-memory)'):
        assert said in ' '.join(text.split()), said


def test_a_tiny_run_says_what_is_in_effect(tmp_path, capsys, caplog):
    """The start-up summary names the augmentations, regularisers and thread split; a log written to a file gets
    step lines by time as well as by count, and one at each end of the evaluation; --no-plot is said as such; predict
    says once that it resizes."""
    out = tmp_path / 'run'
    threads = torch.get_num_threads()
    with caplog.at_level('INFO'):
        try:
            rc = main(['train', '--dataset', 'fake', '--fake-size', '16', '--fake-classes', '4', '--batch-size', '4',
                       '--epochs', '1', '--output', str(out), *MODEL, '--workers', '0', '--threads', '1',
                       '--no-tensorboard', '--no-plot', '--no-progress', '--log-interval', '0',
                       '--log-seconds', '1e-9'])
        finally:
            torch.set_num_threads(threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'plot:        - (--no-plot)' in printed
    log = caplog.text
    assert 'augmentation: RandomResizedCrop scale 0.08-1 ratio 0.75-1.33 (default), hflip 0.5 (default), no ' \
           'auto-augment (default), colour jitter 0.4 (default), no random erasing (default)' in log
    assert 'regularisation: label smoothing 0.1 (default), weight decay 0.05 (default)' in log
    assert 'threads: 1 compute, 0 loader processes (of ' in log
    assert [f'step {i}/4' in log for i in range(1, 5)] == [True] * 4  # by time: every step with 1e-9 s
    assert 'eval: 1 batch ...' in log and 'eval: 8 images in ' in log

    from PIL import Image
    for i, size in enumerate([(64, 40), (50, 30)]):
        Image.new('RGB', size, (i * 90, 30, 60)).save(tmp_path / f'{i}.png')
    caplog.clear()
    with caplog.at_level('INFO'):
        assert main(['predict', str(out / 'best.pth'), str(tmp_path / '0.png'), str(tmp_path / '1.png'),
                     '--threads', '1']) == 0
    # resmlp's crop_pct 0.9: floor(32 / 0.9) = 35
    notices = [r.getMessage() for r in caplog.records if 'resized' in r.getMessage()]
    assert notices == [f"images are resized (shorter side to 35 px, bicubic) and centre-cropped to 32x32, the "
                       f"model's input (first: {tmp_path / '0.png'}, 64x40)"]


# -- pictures -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('classes', [
    ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'],  # CIFAR-10
    [str(i) for i in range(10)], [f'class_{i}' for i in range(25)]])
def test_confusion_matrix_names_do_not_overlap(tmp_path, classes):
    pytest.importorskip('matplotlib')
    from mlpvision.engine.metrics import plot_confusion

    n = len(classes)
    figs = []
    assert plot_confusion(torch.eye(n, dtype=torch.int64) * 5, classes, tmp_path / 'cm.png', figure=figs)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figs[0]).get_renderer()
    figs[0].draw(renderer)
    boxes = [t.get_window_extent(renderer) for t in figs[0].axes[0].get_xticklabels()]
    assert len(boxes) == n
    overlaps = [(classes[i], classes[i + 1]) for i in range(n - 1) if boxes[i].overlaps(boxes[i + 1])]
    assert overlaps == []


# -- the model table ----------------------------------------------------------------------------------------------
def test_models_table_cache_equals_a_fresh_table(tmp_path, monkeypatch, capsys):
    import json

    from mlpvision.model_table import cache_path, format_rows, model_rows

    monkeypatch.setenv('MLPVISION_CACHE', str(tmp_path))
    assert main(['models', 'resmlp_s1*']) == 0
    first = capsys.readouterr().out
    path = cache_path()
    assert path.parent == tmp_path and path.is_file()
    fresh = model_rows('resmlp_s1*')
    assert model_rows('resmlp_s1*', cache=True) == fresh and format_rows(fresh) == first
    assert [r['model'] for r in json.loads(path.read_text())] == ['resmlp_s12']
    assert model_rows('repmlp_cifar_pure', cache=True)[0].paper_data == 'CIFAR-10'  # added to the file
    assert [r['model'] for r in json.loads(path.read_text())] == ['resmlp_s12', 'repmlp_cifar_pure']

    rows = json.loads(path.read_text())  # the file is what later runs read
    rows[0]['params'] = 1
    path.write_text(json.dumps(rows))
    assert model_rows('resmlp_s12', cache=True)[0].params == 1 and model_rows('resmlp_s12')[0].params != 1


def test_missing_val_folder_suggests_the_folders_there(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / 'data'
    for split in ('train', 'test'):
        (data / split / 'a').mkdir(parents=True)
        Image.new('RGB', (8, 8)).save(data / split / 'a' / '0.png')
    rc = main(['train', '--dataset', 'imagefolder', '--data-dir', str(data), '--output', str(tmp_path / 'run'),
               *MODEL, '--workers', '0', '--threads', '1', '--no-tensorboard', '--no-plot', '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1] == (
        f"mlpvision train: error: dataset folder {str(data)!r} has no 'val' folder; expected the ImageNet layout "
        f"{data}/train/<class>/<images> and {data}/val/<class>/<images>; it has 'test': pass --val-split "
        f"test if that is the validation set")
