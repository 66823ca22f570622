"""Spiking networks of the paper. ``import models`` registers every variant with timm."""
from . import maxformer, resnet, spikformer  # noqa: F401  (registration side effects)
from .neurons import NeuronConfig, describe_neurons, make_neuron, neuron_implementation, reset_net  # noqa: F401
