"""The frameworks a comparison has, and their names in text, tables and figures (one place)."""

FRAMEWORKS = ("tf", "torch")
FRAMEWORK_LABELS = {"tf": "TensorFlow", "torch": "PyTorch"}
