"""Spiking networks of the paper. ``import models`` registers every variant with timm."""
from . import maxformer, ms_resnet, spikformer  # noqa: F401  (registration side effects)
from .neurons import NeuronConfig, describe_neurons, make_neuron, neuron_implementation, reset_net  # noqa: F401
from .factory import InputSpec, ModelError, create_model, input_spec, list_our_models, parse_model_kwargs  # noqa: F401
