"""timm-routing: dynamic routing as a pooling layer (Zhao & Huang, 2019) for timm.

Importing the package registers its model families with timm (`timm.create_model('resnet20_routing')`), and
re-exports the routing layers.
"""
from .layers import (
    GLOBAL_POOL_TYPES, PoolClassifierHead, RoutingPool2d, create_global_pool, dynamic_routing, route_by_agreement,
    squash,
)
from . import models
from .models import CifarResNet, ConvNet4

__version__ = '0.1.0'
