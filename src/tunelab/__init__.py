"""tunelab: fine-tune pre-trained models for your own task, with evidence."""

__version__ = "0.1.0"
