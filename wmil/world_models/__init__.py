"""World models behind one protocol (:class:`WorldModel`): ``rssm`` (DreamerV2, categorical
latents), ``gaussian_rssm`` (VMIL / PlaNet, Gaussian latents), ``dynamics`` (VINS M(s, a))."""

from wmil.config import field_docs
from wmil.world_models.base import State, WorldModel, WorldModelBase, total_loss
from wmil.world_models.dynamics import Dynamics, DynamicsConfig
from wmil.world_models.gaussian_rssm import GaussianRSSM, GaussianRSSMConfig
from wmil.world_models.registry import PRESETS, WORLD_MODELS, config_for, make_world_model, model_class
from wmil.world_models.rssm import RSSM, RecurrentConfig, RSSMConfig

__all__ = [
    "State", "WorldModel", "WorldModelBase", "field_docs", "total_loss",
    "WORLD_MODELS", "PRESETS", "config_for", "make_world_model", "model_class",
    "RSSM", "RSSMConfig", "RecurrentConfig", "GaussianRSSM", "GaussianRSSMConfig",
    "Dynamics", "DynamicsConfig",
]
