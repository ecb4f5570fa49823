"""`python -m timm_routing.data --npz <dataset.npz> --out <folder>`: ImageFolder export for timm's train.py."""
import argparse
import sys

from .npz import export_image_folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m timm_routing.data',
        description='Write train/ validation/ test/ ImageFolders (and split.json) from a dataset .npz.')
    parser.add_argument('--npz', required=True, help='dataset .npz with x_train, y_train, x_test, y_test')
    parser.add_argument('--out', required=True, help='output folder (must not hold an export already)')
    parser.add_argument('--val-size', type=int, default=5000, help='images held out of train for validation')
    parser.add_argument('--seed', type=int, default=0, help='seed of the stratified validation draw')
    parser.add_argument('--limit', type=int, default=None, help='first N train and test images only')
    parser.add_argument('--variant', default=None, choices=('mnist_shift', 'mnist_centred', 'affnist_like'),
                        help='write an MNIST-derived set of the CapsNet experiments (from mnist.npz)')
    args = parser.parse_args(argv)
    counts = export_image_folder(args.npz, args.out, args.val_size, args.seed, args.limit, args.variant)
    print(f'{args.out}: ' + ', '.join(f'{k} {v}' for k, v in counts.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
