"""Few-shot paths for tiny data sets: SetFit for text classification (setfit.py), and the model its runs
save (model.py: a sentence encoder with a linear head, loaded like any text classifier)."""
