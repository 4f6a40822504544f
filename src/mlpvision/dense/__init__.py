"""Dense prediction on mlpvision backbones: pyramids for any input size and the heads on them."""
from .upernet import upernet
