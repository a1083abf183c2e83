"""segaudit: does your segmentation model read the image?"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segaudit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
