"""Vision support for the image tasks: backbones, fine-tuning strategies, pre-processing and augmentation."""
