""" Pretrained-config defaults of the datasets the package's models are trained on

Means and standard deviations are those of the genuine training splits on [0, 1].
"""
from typing import Any, Dict

__all__ = [
    'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR10_CLASSES', 'FASHION_MNIST_MEAN', 'FASHION_MNIST_STD',
    'FASHION_MNIST_CLASSES', 'MNIST_CLASSES', 'cifar10_cfg', 'fashion_mnist_cfg', 'mnist_variant_cfg',
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')

MNIST_CLASSES = tuple(str(i) for i in range(10))


def cifar10_cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    """Default cfg for a CIFAR-10 classifier: 32x32 RGB, no resize or crop at evaluation (`crop_pct=1.0`)."""
    return {
        'url': url, 'num_classes': 10, 'input_size': (3, 32, 32), 'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD, 'label_names': CIFAR10_CLASSES, 'license': 'apache-2.0',
        **kwargs,
    }


def fashion_mnist_cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    """Default cfg for a Fashion-MNIST classifier: 28x28 grey, `crop_pct=1.0`."""
    return {
        'url': url, 'num_classes': 10, 'input_size': (1, 28, 28), 'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': FASHION_MNIST_MEAN, 'std': FASHION_MNIST_STD, 'label_names': FASHION_MNIST_CLASSES,
        'license': 'apache-2.0', **kwargs,
    }


def mnist_variant_cfg(img_size: int = 40, url: str = '', **kwargs: Any) -> Dict[str, Any]:
    """Default cfg for the MNIST-derived sets of the CapsNet experiments (expanded MNIST 40x40, MultiMNIST 36x36):
    grey, raw pixels in [0, 1] (mean 0, std 1, as Sabour et al. feed CapsNet), `crop_pct=1.0`."""
    return {
        'url': url, 'num_classes': 10, 'input_size': (1, img_size, img_size), 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'mean': (0.,), 'std': (1.,), 'label_names': MNIST_CLASSES, 'license': 'apache-2.0',
        **kwargs,
    }
