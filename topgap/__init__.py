"""Top-GAP: a size prior for CNN classifiers (top-k pooling of FPN class maps + an l1 loss)."""
from .cam import METHODS as METHODS, baseline_cam as baseline_cam, topgap_cam as topgap_cam
from .checkpoint import (CheckpointError as CheckpointError, build_model as build_model, load_model as load_model,
                         save_model as save_model)
from .config import ModelConfig as ModelConfig
from .loss import topgap_loss as topgap_loss
from .model import TopGapNet as TopGapNet, create_baseline as create_baseline
from .pooling import TopGAP as TopGAP, top_gap as top_gap

__version__ = "0.1.0"
__all__ = ["TopGAP", "top_gap", "TopGapNet", "create_baseline", "topgap_loss", "ModelConfig", "build_model",
           "save_model", "load_model", "CheckpointError", "topgap_cam", "baseline_cam", "METHODS"]
