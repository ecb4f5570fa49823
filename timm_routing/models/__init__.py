from .convnet import *
from .resnet_cifar import *
