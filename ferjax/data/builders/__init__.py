"""TFDS builders of the FER datasets, by the name the build command and configs use."""

from ferjax.data.builders.affectnet import Affectnet
from ferjax.data.builders.base import FerBuilder
from ferjax.data.builders.ckplus import Ckplus, subject_folds
from ferjax.data.builders.fer2013 import Fer2013, Ferplus
from ferjax.data.builders.image_folder import FerImageFolder
from ferjax.data.builders.rafdb import Rafdb
from ferjax.data.builders.synthetic_fer import SyntheticFer

BUILDERS: dict[str, type[FerBuilder]] = {
    "rafdb": Rafdb,
    "affectnet": Affectnet,
    "fer2013": Fer2013,
    "ferplus": Ferplus,
    "ckplus": Ckplus,
    "image_folder": FerImageFolder,
    "synthetic_fer": SyntheticFer,
}


def get_builder_class(name: str) -> type[FerBuilder]:
    try:
        return BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)}") from None


__all__ = ["BUILDERS", "FerBuilder", "get_builder_class", "subject_folds"]
