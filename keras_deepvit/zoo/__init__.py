"""The registered variants: one record each, and everything built from the records:
`create_model`, `list_models`, `variant_info`, the named constructors,
`preprocess_input`, `weights="imagenet"` and `looks_like`."""

from keras_deepvit.zoo.constructors import CONSTRUCTORS
from keras_deepvit.zoo.identify import describe, looks_like
from keras_deepvit.zoo.preprocess import preprocess_input, preprocessing_config
from keras_deepvit.zoo.records import RECORDS, Checkpoint, VariantRecord
from keras_deepvit.zoo.registry import create_model, list_models, variant_info

globals().update(CONSTRUCTORS)

__all__ = [
    "CONSTRUCTORS", "Checkpoint", "RECORDS", "VariantRecord", "create_model", "describe",
    "list_models", "looks_like", "preprocess_input", "preprocessing_config", "variant_info",
] + list(CONSTRUCTORS)
