"""The built-in provider simulator: OpenAI and Anthropic routes with latency, limits, faults."""

from .server import Simulator, SimulatorConfig

__all__ = ["Simulator", "SimulatorConfig"]
