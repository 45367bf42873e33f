"""freecp: training-free open-vocabulary semantic segmentation with FreeCP class purification."""

__version__ = "0.1.0"
