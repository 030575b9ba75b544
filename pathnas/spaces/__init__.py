"""Search spaces and their single-path supernets, by name."""
from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from ..errors import ConfigError
from ..settings import config_error
from .base import INACTIVE, Architecture, ArchitectureError, Decision, Option, SearchSpace
from .shufflenet import ShuffleNetConfig, ShuffleNetSupernet
from .supernet import SpaceConfig, Supernet
from .unet import UNetConfig, UNetSupernet
from .vit import ViTConfig, ViTSupernet

SUPERNETS: dict[str, type[Supernet]] = {
    "shufflenet": ShuffleNetSupernet,
    "unet": UNetSupernet,
    "vit": ViTSupernet,
}
AnySpaceConfig = Annotated[Union[ShuffleNetConfig, UNetConfig, ViTConfig], Field(discriminator="space")]
_config_adapter: TypeAdapter = TypeAdapter(AnySpaceConfig)


def space_config(space: str, **knobs: Any) -> SpaceConfig:
    """Validated config for a space by name; unknown spaces and fields are named in the error."""
    if space not in SUPERNETS:
        raise ConfigError(f"unknown space {space!r}; known spaces: {', '.join(SUPERNETS)}")
    return config_from_dict({"space": space, **knobs})


def config_from_dict(data: dict) -> SpaceConfig:
    try:
        return _config_adapter.validate_python(data)
    except ValidationError as err:
        raise config_error(err, "space configuration", lambda loc: ".".join(map(str, loc)) or "config") from None


def build_supernet(config: SpaceConfig) -> Supernet:
    return SUPERNETS[config.space](config)


__all__ = [
    "INACTIVE", "Architecture", "ArchitectureError", "Decision", "Option", "SearchSpace", "SpaceConfig",
    "Supernet", "ShuffleNetConfig", "ShuffleNetSupernet", "UNetConfig", "UNetSupernet", "ViTConfig",
    "ViTSupernet", "SUPERNETS", "ConfigError", "space_config", "config_from_dict", "build_supernet",
]
