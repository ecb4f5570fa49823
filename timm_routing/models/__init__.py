from ._cfg import *
from .backbones import *
from .capsnet import *
from .convnet import *
from .resnet_cifar import *


def routing_model_modules() -> list:
    """Module names (as timm's registry keys them) of this package's model families."""
    import timm
    from timm.models import model_entrypoint
    return sorted({
        model_entrypoint(name).__module__.split('.')[-1] for name in timm.list_models()
        if model_entrypoint(name).__module__.startswith('timm_routing.')
    })


def routing_model_names() -> list:
    """Names of every model this package registers with timm."""
    import timm
    return timm.list_models(module=routing_model_modules())
