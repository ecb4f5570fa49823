"""`python -m timm_routing.data --npz <dataset.npz> --out <folder>`: ImageFolder export for timm's train.py."""
import argparse
import json
import sys
from pathlib import Path

from .npz import export_image_folder, padded_crop_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m timm_routing.data',
        description='Write train/ validation/ test/ ImageFolders (and split.json) from a dataset .npz.')
    parser.add_argument('--npz', required=True, help='dataset .npz with x_train, y_train, x_test, y_test')
    parser.add_argument('--out', required=True, help='output folder (must not hold an export already)')
    parser.add_argument('--val-size', type=int, default=5000, help='images held out of train for validation')
    parser.add_argument('--seed', type=int, default=0, help='seed of the stratified validation draw')
    parser.add_argument('--limit', type=int, default=None,
                        help='first N train and test images only (few classes where the file is sorted by class, as '
                             'the CIFAR-10 one is)')
    parser.add_argument('--variant', default=None, choices=('mnist_shift', 'mnist_centred', 'affnist_like'),
                        help='write an MNIST-derived set of the CapsNet experiments (from mnist.npz)')
    parser.add_argument('--train-pad', type=int, default=0, metavar='PIXELS',
                        help="zero-pad the training images by PIXELS on each side, for He et al.'s pad-and-crop "
                             "augmentation in train.py (the matching --scale/--ratio are printed)")
    args = parser.parse_args(argv)
    if args.train_pad < 0:
        parser.error(f'--train-pad must be >= 0, got {args.train_pad}')
    counts = export_image_folder(args.npz, args.out, args.val_size, args.seed, args.limit, args.variant,
                                 train_pad=args.train_pad)
    print(f'{args.out}: ' + ', '.join(f'{k} {v}' for k, v in counts.items()))
    if args.train_pad:
        height, width = json.loads((Path(args.out) / 'split.json').read_text())['image_size']
        crop = padded_crop_args(height, width, args.train_pad)
        print(f'train/ holds {height + 2 * args.train_pad}x{width + 2 * args.train_pad} images; for a random '
              f'{height}x{width} crop of them give train.py: --scale {crop["scale"][0]!r} {crop["scale"][1]!r} '
              f'--ratio {crop["ratio"][0]!r} {crop["ratio"][1]!r} --color-jitter 0')
    return 0


if __name__ == '__main__':
    sys.exit(main())
