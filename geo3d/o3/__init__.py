"""Irreps plans for geo3d's kernels (the irreps algebra and CG coefficients come from e3nn)."""

from geo3d.o3.instructions import channelwise_instructions, fully_connected_instructions
from geo3d.o3.tp_plan import Instruction, TPPlan

__all__ = ["Instruction", "TPPlan", "channelwise_instructions", "fully_connected_instructions"]
