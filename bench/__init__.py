"""twinbench core: framework-free (numpy, pandas, matplotlib, h5py only).

Nothing in this package imports tensorflow, keras, torch or torchvision; each framework runs
in its own worker process (``python -m tf_impl.worker JOB`` / ``python -m torch_impl.worker JOB``).
"""

__version__ = "0.1.0"
