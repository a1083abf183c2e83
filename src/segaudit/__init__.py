"""segaudit: does your segmentation model read the image?

From Python: `segaudit.audit_model(model, dataset=..., root=...)` and
`segaudit.check_model(...)` (`segaudit.api`), loaded on first use so that the command
line starts without importing torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segaudit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_API = ("audit_model", "check_model", "RedFlags")


def __getattr__(name: str):
    if name in _API:
        from segaudit import api

        return getattr(api, name)
    raise AttributeError(f"module 'segaudit' has no attribute {name!r}")


__all__ = ["RedFlags", "__version__", "audit_model", "check_model"]
