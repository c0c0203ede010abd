"""dialsum: fine-tune and ship Korean dialogue summarizers."""

__version__ = "0.1.0"
