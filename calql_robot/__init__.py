"""calql_robot: Cal-QL offline pre-training and online fine-tuning for robot manipulation."""

__version__ = "0.1.0"
