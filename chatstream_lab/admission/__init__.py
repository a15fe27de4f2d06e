"""Stage 3 of the data path: who runs, who waits, who is refused."""

from .gate import AdmissionGate, GateSnapshot

__all__ = ["AdmissionGate", "GateSnapshot"]
