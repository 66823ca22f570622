"""Spiking networks of the paper. ``import models`` registers every variant with timm."""
from . import maxformer, ms_resnet, spikformer  # noqa: F401  (registration side effects)
from .neurons import NeuronConfig, describe_neurons, make_neuron, neuron_implementation, reset_net  # noqa: F401
from .factory import (InputSpec, ModelError, check_model_kwargs, create_model, input_spec,  # noqa: F401
                      list_our_models, parse_model_kwargs)
