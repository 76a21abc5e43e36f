"""Models by name: the demo networks registered here, and every timm model."""
from .factory import create_model, list_models, load_checkpoint, register_model, save_checkpoint
