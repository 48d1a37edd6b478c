"""`register_criterion_once`: fairseq's `register_criterion` as an idempotent, visible decorator.

fairseq's `register_model` and `register_task` return the existing class when a name is registered
again; `register_criterion` raises instead. The plugin can be imported twice (as `avhubert` and
through `common.user_dir` under another module path), so the criteria use this decorator: a second
registration of the same class name is skipped, a different class under a taken name is refused.
"""

from typing import Callable, Optional, Type, TypeVar

from fairseq.criterions import CRITERION_REGISTRY, register_criterion
from fairseq.dataclass import FairseqDataclass

__all__ = ["register_criterion_once"]

C = TypeVar("C", bound=type)


def register_criterion_once(name: str, dataclass: Optional[Type[FairseqDataclass]] = None) -> Callable[[C], C]:
    """Decorator: register `cls` as criterion `name` unless the plugin already did (same class name)."""

    def register(cls: C) -> C:
        existing = CRITERION_REGISTRY.get(name)
        if existing is None:
            return register_criterion(name, dataclass=dataclass)(cls)
        if existing.__name__ != cls.__name__:
            raise ValueError(f"criterion {name!r} is already registered by {existing.__module__}.{existing.__name__}; "
                             f"cannot register {cls.__module__}.{cls.__name__} under the same name")
        return cls  # the plugin imported a second time (another module path): keep the first registration

    return register
