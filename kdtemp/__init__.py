"""kdtemp: knowledge-distillation temperature studies from one command."""

__version__ = "0.1.0"
