from .capsule import CapsuleDecoder, ClassCapsuleHead, DigitCapsules, PrimaryCapsules, attach_aux_loss, class_mask
from .classifier import PoolClassifierHead
from .pool import GLOBAL_POOL_TYPES, create_global_pool, resolve_routing_args
from .routing import (
    ROUTING_ACTIVATIONS, RoutingPool2d, Squash, VectorNorm, create_routing_act, dynamic_routing, route_by_agreement,
    route_over_parents, routing_pool2d, squash, vector_norm,
)
