"""`mlpvision bench` runs end to end on tiny settings and writes well-formed CSV, Markdown and PNG (no timings are
asserted: speed lives in the command, not in tests)."""
import csv

import pytest
import torch

import mlpvision
from mlpvision.bench import BenchSettings, _percentile, resolve_models
from mlpvision.cli.bench import parse_kwargs
from mlpvision.cli.main import main

# a one-block ResMLP on 32x32 inputs: 4 tokens, 32 channels
TINY = ['resmlp_s12', '--model-kwargs', 'depth=1,embed_dim=32', '--img-size', '32', '--threads', '1',
        '--repeats', '2', '--warmup', '1', '--iters', '1']
NUMERIC = ('params', 'gmacs', 'infer_img_s', 'infer_spread_pct', 'latency_p50_ms', 'latency_p90_ms',
           'peak_mem_infer_mib')


def _read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _md_rows(text):
    table = [line for line in text.splitlines() if line.startswith('|')]
    header, rule, rows = table[0], table[1], table[2:]
    ncol = header.count('|') - 1
    assert set(rule.replace('|', '').replace('-', '').replace(':', '')) == set()
    assert all(r.count('|') - 1 == ncol for r in rows)
    return header, [[c.strip() for c in r.strip('|').split('|')] for r in rows]


def _check_png(path):
    import matplotlib.image as mpimg
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_bench_fp32_with_baseline(tmp_path, capsys):
    assert main(['bench', *TINY, '--baseline', 'test_resnet', '-o', str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert '[repeat 2/2] resmlp_s12' in err and '[repeat 2/2] test_resnet' in err  # progress on stderr
    rows = _read_csv(tmp_path / 'bench.csv')
    assert [r['model'] for r in rows] == ['resmlp_s12', 'test_resnet']
    assert [r['source'] for r in rows] == ['mlpvision', 'timm']
    tiny = mlpvision.create_model('resmlp_s12', depth=1, embed_dim=32, img_size=32)
    assert int(rows[0]['params']) == mlpvision.count_params(tiny)
    for r in rows:
        assert r['input_size'] == '32x32' and r['form'] == 'train' and r['dtype'] == 'fp32'
        assert r['batch_size'] == '8' and r['threads'] == '1' and r['repeats'] == '2' and r['clock'] == 'wall'
        for k in NUMERIC + ('train_img_s', 'peak_mem_train_mib'):
            assert float(r[k]) >= 0, k
        assert float(r['latency_p90_ms']) >= float(r['latency_p50_ms'])
        # held weights alone bound the peak from below
        assert float(r['peak_mem_infer_mib']) * 2 ** 20 >= 4 * int(r['params'])
        assert float(r['peak_mem_train_mib']) >= float(r['peak_mem_infer_mib'])
    # the model kwargs change the architecture, so the paper's figures are left out; baselines have none
    assert all(r['paper_top1'] == '' for r in rows)
    md = (tmp_path / 'bench.md').read_text()
    assert md == out
    header, cells = _md_rows(md)
    assert 'paper top-1' in header and 'img/s (b8)' in header
    assert [c[0] for c in cells] == ['resmlp_s12', 'test_resnet (timm)']
    assert 'memory_method' in md and 'torch.profiler' in md
    _check_png(tmp_path / 'bench.png')
    # the folder reads back for a redraw (benchmarks/plot_bench.py)
    from mlpvision.bench import read_outputs
    results, settings, env = read_outputs(tmp_path)
    assert [r.model for r in results] == ['resmlp_s12', 'test_resnet'] and results[0].params == int(rows[0]['params'])
    assert (settings.batch_size, settings.threads, settings.dtype, settings.reparam) == (8, 1, 'fp32', False)
    assert env['torch'] == torch.__version__ and env['threads'] == '1'
    # a folder without results, or with an empty CSV, is named in the error
    from mlpvision.errors import UsageError
    with pytest.raises(UsageError, match=r'has no bench.csv'):
        read_outputs(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'bench.csv').write_text(open(tmp_path / 'bench.csv').readline())
    with pytest.raises(UsageError, match=r'empty/bench.csv has no rows'):
        read_outputs(tmp_path / 'empty')


def test_bench_bf16_deploy_channels_last(tmp_path, capsys):
    args = [*TINY, '--amp', 'bf16', '--deploy', '--channels-last', '--no-train', '--batch-size', '2',
            '--clock', 'cpu', '--repeats', '1', '--warmup', '0', '--baseline', 'test_resnet', '-o', str(tmp_path)]
    assert main(['bench', *args]) == 0
    row, baseline = _read_csv(tmp_path / 'bench.csv')
    assert baseline['form'] == 'train'  # nothing to re-parameterise: not labelled a deploy form
    deployed = mlpvision.create_model('resmlp_s12', depth=1, embed_dim=32, img_size=32, deploy=True)
    assert row['form'] == 'deploy' and int(row['params']) == mlpvision.count_params(deployed)
    assert row['dtype'] == 'bf16' and row['channels_last'] == 'True' and row['batch_size'] == '2'
    assert row['clock'] == 'cpu'
    assert row['train_img_s'] == '' and row['peak_mem_train_mib'] == ''
    for k in NUMERIC:
        assert float(row[k]) >= 0, k
    _, cells = _md_rows((tmp_path / 'bench.md').read_text())
    assert [c[0] for c in cells] == ['resmlp_s12 [deploy]', 'test_resnet (timm)']
    _check_png(tmp_path / 'bench.png')


def test_paper_figures_beside_measured(tmp_path):
    """Without model kwargs a row carries the registry's paper figures next to the measured params and MACs."""
    args = ['resmlp_s12', '--batch-size', '1', '--repeats', '1', '--warmup', '0', '--iters', '1', '--no-latency',
            '--no-train', '--no-memory', '--threads', '1', '-o', str(tmp_path)]
    assert main(['bench', *args]) == 0
    (row,) = _read_csv(tmp_path / 'bench.csv')
    meta = mlpvision.model_meta('resmlp_s12')
    assert int(row['params']) == meta.params
    assert round(float(row['gmacs']), 2) == round(meta.gmacs, 2)
    assert (row['paper_params'], float(row['paper_gmacs']), float(row['paper_top1'])) == ('15.4M', 3.0, 76.6)
    assert row['latency_p50_ms'] == '' and row['peak_mem_infer_mib'] == ''
    _, cells = _md_rows((tmp_path / 'bench.md').read_text())
    assert cells[0][:6] == ['resmlp_s12', '15.35', '3.01', '15.4M', '3', '76.6']
    assert cells[0][6] == row['paper_dataset'] == 'ImageNet-1k'
    _check_png(tmp_path / 'bench.png')


def test_plot_keeps_paper_figures_of_one_data_set_together(tmp_path):
    """repmlp_cifar_pure's 91.11% is CIFAR-10's: it is left off an axis of ImageNet-1k figures, and named."""
    from mlpvision.bench import BenchResult, plot_points, write_plot
    from mlpvision.model_table import paper_dataset

    assert paper_dataset('repmlp_cifar_pure') == 'CIFAR-10'
    assert {paper_dataset(n) for n in mlpvision.list_models() if n != 'repmlp_cifar_pure'} == {'ImageNet-1k'}

    def result(name, top1, img_s, source='mlpvision'):
        return BenchResult(model=name, source=source, family=name.split('_')[0], form='train', input_size='32x32',
                           params=1, gmacs=1.0, infer_img_s=img_s, paper_top1=top1,
                           paper_dataset=paper_dataset(name) if top1 is not None else None)

    results = [result('resmlp_s12', 76.6, 100.0), result('repmlp_cifar_pure', 91.11, 300.0),
               result('hire_mlp_tiny', 79.7, 50.0), result('test_resnet', None, 80.0, 'timm')]
    dataset, shown, left_out = plot_points(results)
    assert dataset == 'ImageNet-1k'
    assert [r.model for r in shown] == ['resmlp_s12', 'hire_mlp_tiny'] and [r.model for r in left_out] == \
        ['repmlp_cifar_pure']
    assert plot_points(results[1:2])[:2] == ('CIFAR-10', results[1:2])  # alone, it has its own axis
    texts = write_plot(results, BenchSettings(), tmp_path / 'bench.png')
    _check_png(tmp_path / 'bench.png')
    assert sorted(t.get_text() for t in texts) == ['hire_mlp_tiny', 'resmlp_s12', 'test_resnet']


def test_plot_title_names_its_conditions_and_labels_do_not_overlap(tmp_path):
    """bench.png's title carries the host, threads, batch and torch version; a crowd of models close together in
    throughput and top-1, and baselines beside them, get labels that do not overlap."""
    from mlpvision.bench import BenchResult, plot_title, write_plot
    from mlpvision.plotting import overlapping_labels

    settings = BenchSettings(batch_size=16, dtype='bf16', reparam=True)
    env = {'host_id': 'epyc-avx512-1207', 'cpu': 'AMD EPYC', 'threads': '2', 'torch': '2.99.0',
           'loadavg_before': '3.10 2.00 1.00', 'loadavg_after': '4.20 2.50 1.10'}
    title = plot_title(settings, env)
    for part in ('host epyc-avx512-1207', '2 threads', 'batch 16', 'torch 2.99.0', 'bf16 autocast', 'deploy form',
                 'load 3.10 before, 4.20 after'):
        assert part in title, part
    assert 'host AMD EPYC' in plot_title(settings, {k: v for k, v in env.items() if k != 'host_id'})
    names = [n for n in mlpvision.list_models() if n != 'repmlp_cifar_pure'][:10]
    results = [BenchResult(model=n, source='mlpvision', family=mlpvision.model_family(n), form='train',
                           input_size='224x224', params=1, gmacs=1.0, infer_img_s=40.0 + i, paper_top1=80.0 + 0.1 * i,
                           paper_dataset='ImageNet-1k') for i, n in enumerate(names)]
    results += [BenchResult(model=f'baseline_{i}', source='timm', family='timm', form='train', input_size='224x224',
                            params=1, gmacs=1.0, infer_img_s=41.0 + i) for i in range(3)]
    texts = write_plot(results, settings, tmp_path / 'bench.png', env)
    _check_png(tmp_path / 'bench.png')
    assert len(texts) == 13 and overlapping_labels(texts) == []
    assert texts[0].axes.get_title() == title


def test_errors(capsys):
    assert main(['bench', 'resmlp_s12', '--baseline', 'not_a_timm_model']) == 2
    assert 'not_a_timm_model' in capsys.readouterr().err
    assert main(['bench', 'nothing_like_this*']) == 2
    assert 'nothing_like_this*' in capsys.readouterr().err
    assert main(['bench']) == 2
    assert '--baseline' in capsys.readouterr().err
    with pytest.raises(ValueError, match='dtype'):
        BenchSettings(dtype='int8')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda'"):
            BenchSettings(device='cuda')
    with pytest.raises(ValueError, match='key=value'):
        parse_kwargs('depth')


def test_helpers():
    assert parse_kwargs('depth=2, embed_dim=64,act=gelu') == {'depth': 2, 'embed_dim': 64, 'act': 'gelu'}
    assert parse_kwargs('{"img_size": [32, 32]}') == {'img_size': [32, 32]}
    assert resolve_models('resmlp_s12,resmlp_s2*', ['resnet18']) == [
        ('resmlp_s12', 'mlpvision'), ('resmlp_s24', 'mlpvision'), ('resnet18', 'timm')]
    assert _percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert _percentile([7.0], 50) == 7.0


def test_environment_reports_gemm_peaks_and_library_versions():
    from mlpvision.bench import environment, gemm_peaks
    peaks = gemm_peaks(threads=1, size=64, repeats=1)
    assert set(peaks) == {'gemm_fp32_mm', 'gemm_fp32_layers', 'gemm_bf16_layers'}
    assert all(v > 0 for v in peaks.values())
    env = environment(BenchSettings(threads=1))
    assert 'G MAC/s fp32' in env['gemm_peaks'] and 'bf16' in env['gemm_peaks']
    assert env['torch'] == torch.__version__
    if torch.backends.mkldnn.is_available():
        assert env['onednn'][0].isdigit()
    assert 'gemm_peaks' not in environment(BenchSettings(threads=1, gemm_peaks=False))


def test_environment_names_the_bf16_and_int8_hardware_and_any_isa_cap(monkeypatch):
    from mlpvision.bench import environment
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    isa = environment(BenchSettings(threads=1, gemm_peaks=False))['cpu_isa']
    assert 'bf16 GEMM:' in isa and 'int8 GEMM:' in isa and 'ONEDNN_MAX_CPU_ISA' not in isa
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX512_CORE_BF16')
    assert 'ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16' in environment(BenchSettings(threads=1, gemm_peaks=False))['cpu_isa'] \
        or 'no /proc/cpuinfo flags' in isa
