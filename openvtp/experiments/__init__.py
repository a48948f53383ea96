"""Experiments that chain the stages: the demo (`openvtp demo`) and, on top of it, the study."""
