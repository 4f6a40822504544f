"""mlpvision.dense.maskrcnn / retinanet on every backbone family at a non-square size; parameter counts against the
official AS-MLP detection README; checkpoint loading; the generated COCO shapes data and COCO mAP."""
import pytest
import torch

import mlpvision
from mlpvision import CheckpointError, save_state_dict
from mlpvision.dense import backbone, maskrcnn, retinanet
from mlpvision.dense.coco import SHAPES, CocoDetection, collate, evaluate, make_coco_shapes
from mlpvision.errors import UsageError
from test_dense_backbone import SMALL


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_coco_shapes(root, num_images=4, size=(72, 104), seed=0)
    return CocoDetection(root)


@pytest.mark.parametrize('detector', [maskrcnn, retinanet])
@pytest.mark.parametrize('name', list(SMALL))
def test_detectors_train_and_predict_at_a_non_square_size(name, detector, shapes):
    torch.manual_seed(0)
    kw = dict(box_batch_size_per_image=32, rpn_batch_size_per_image=32) if detector is maskrcnn else {}
    model = detector(name, len(SHAPES), backbone_kwargs=SMALL[name], min_size=72, max_size=104, **kw)
    images, targets = collate([shapes[0], shapes[1]])
    losses = model.train()(images, targets)
    expected = ({'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}
                if detector is maskrcnn else {'classification', 'bbox_regression'})
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():
        out = model.eval()(images[:1])
    assert out[0]['boxes'].shape[1] == 4
    if detector is maskrcnn:
        assert out[0]['masks'].shape[1:] == (1, 72, 104)


def test_maskrcnn_param_counts_match_the_official_readme():
    """svip-lab/AS-MLP-Object-Detection README: Mask R-CNN + AS-MLP-T / S = 48M / 69M (80 classes).

    torchvision's heads are mmdet's but for the box regressor (4 outputs per class with the background: 4 * 1025
    more) and the mask classifier (a background channel: 257 more); without those the count is mmdet's model."""
    with torch.device('meta'):
        t, s = maskrcnn('as_mlp_tiny', 80), maskrcnn('as_mlp_small', 80)
    n_t, n_s = mlpvision.count_params(t), mlpvision.count_params(s)
    assert (n_t, n_s) == (47_793_301, 69_105_301)
    assert abs(n_t - 4100 - 257 - 48e6) / 48e6 < 0.01 and abs(n_s - 4100 - 257 - 69e6) / 69e6 < 0.01
    assert mlpvision.count_params(t.backbone.fpn) == 2_729_984  # mmdet FPN(96..768 -> 256): 4 laterals + 4 3x3
    assert mlpvision.count_params(t.roi_heads.box_head) == 256 * 49 * 1024 + 1024 + 1024 * 1024 + 1024


@pytest.mark.slow
def test_maskrcnn_macs_match_the_official_readme():
    """260 / 346 G at 1280 x 800 (README; mmdet's get_flops: 1000 proposals, the mask head on 100 RoIs, which
    ``box_score_thresh=0`` gives here too): 259.8 / 344.7 G measured."""
    torch.manual_seed(0)
    for name, official in (('as_mlp_tiny', 260), ('as_mlp_small', 346)):
        p = mlpvision.profile(maskrcnn(name, 80, box_score_thresh=0.0), (3, 1280, 800))
        assert abs(p.gmacs - official) / official < 0.01


def test_retinanet_uses_p3_to_p7():
    model = retinanet('as_mlp_tiny', 80, backbone_kwargs=dict(depths=(1, 1, 1, 1)), min_size=64, max_size=96)
    feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert list(feats) == ['0', '1', '2', 'p6', 'p7']
    assert [f.shape[-1] for f in feats.values()] == [12, 6, 3, 2, 1]  # strides 8 .. 128
    assert model.head.classification_head.num_classes == 81  # labels 1..80 as Mask R-CNN's, class 0 unused


def test_backbone_module_or_name(tmp_path):
    b = backbone('hire_mlp_tiny', depths=(1, 1, 1, 1))
    assert maskrcnn(b, 3).backbone.body is b
    with pytest.raises(UsageError, match=r'out_indices=\(1, 2, 3\)'):
        retinanet(b, 3)
    with pytest.raises(UsageError, match='already built'):
        maskrcnn(b, 3, backbone_kwargs=dict(depths=(1, 1, 1, 1)))


def test_whole_detector_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    kw = dict(backbone_kwargs=dict(depths=(1, 1, 1, 1)), min_size=64, max_size=96)
    model = maskrcnn('as_mlp_tiny', 3, **kw)
    save_state_dict(model, tmp_path / 'det.safetensors')
    torch.manual_seed(1)
    again = maskrcnn('as_mlp_tiny', 3, checkpoint_path=tmp_path / 'det.safetensors', **kw)
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    with pytest.raises(CheckpointError):
        maskrcnn('as_mlp_tiny', 5, checkpoint_path=tmp_path / 'det.safetensors', **kw)


def test_canvas_backbone_sets_the_resize_to_fit():
    model = maskrcnn('strip_mlp_tiny', 3, backbone_kwargs=SMALL['strip_mlp_tiny'])
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    with torch.no_grad():
        model.eval()([torch.rand(3, 300, 500)])  # resized to fit the 128 x 160 canvas


def test_coco_shapes_and_an_oracle_scores_ap_1(shapes):
    image, target = shapes[0]
    assert image.shape == (3, 72, 104) and 0 <= image.min() and image.max() <= 1
    n = len(target['labels'])
    assert n >= 1 and target['boxes'].shape == (n, 4) and target['masks'].shape == (n, 72, 104)
    m = target['masks'].bool()
    for box, mask in zip(target['boxes'], m, strict=True):  # each box is its mask's extent
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = 0

        def forward(self, images):
            out = []
            for _ in images:
                t = shapes[self.seen][1]
                self.seen += 1
                out.append(dict(boxes=t['boxes'], labels=t['labels'], scores=torch.ones(len(t['labels'])),
                                masks=t['masks'][:, None].float()))
            return out

    assert evaluate(Oracle(), shapes) == {f'{k}_{s}': 1.0 for k in ('bbox', 'segm') for s in ('AP', 'AP50', 'AP75')}


def test_evaluate_a_detector(shapes):
    model = maskrcnn('as_mlp_tiny', 3, backbone_kwargs=dict(depths=(1, 1, 1, 1)), min_size=72, max_size=104)
    metrics = evaluate(model, shapes)
    assert set(metrics) == {f'{k}_{s}' for k in ('bbox', 'segm') for s in ('AP', 'AP50', 'AP75')}
    assert all(0 <= v <= 1 for v in metrics.values())


@pytest.mark.slow
def test_maskrcnn_loss_goes_down(tmp_path):
    """120 AdamW steps on 32 generated images: the mean loss of the last 20 steps is under half the first 20's."""
    torch.manual_seed(0)
    make_coco_shapes(tmp_path, num_images=32, size=(72, 104))
    data = CocoDetection(tmp_path)
    model = maskrcnn('as_mlp_tiny', 3, backbone_kwargs=dict(depths=(1, 1, 1, 1)), min_size=72, max_size=104,
                     box_batch_size_per_image=64).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=True, collate_fn=collate)
    losses = []
    while len(losses) < 120:
        for images, targets in loader:
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
