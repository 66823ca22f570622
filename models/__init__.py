"""Spiking networks of the paper. ``import models`` registers every variant with timm."""
# The model families, registered with timm on import: a new family is one more module here (docs/models.md).
from . import maxformer, ms_resnet, spikformer  # noqa: F401
from .neurons import NeuronConfig, describe_neurons, make_neuron, neuron_implementation, reset_net  # noqa: F401
from .factory import (TOP_LEVEL_KWARGS, InputSpec, ModelError, build_model, check_model_kwargs, create_model,  # noqa: F401
                      input_spec, list_our_models, parse_model_kwargs)
