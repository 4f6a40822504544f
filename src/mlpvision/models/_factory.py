"""timm 1.0's factory arguments (``device=``, ``dtype=``) for every mlpvision model constructor.

timm 1.0 models take ``device`` and ``dtype`` and build every parameter and buffer directly there (timm threads
``dd = {'device': device, 'dtype': dtype}`` through each layer, e.g. ``models/convnext.py``, ``models/mlp_mixer.py``;
``timm.create_model(name, device='meta')`` reaches the constructor through ``build_model_with_cfg``). Our families
get the same effect without threading the pair through every layer: :func:`factory_kwargs` runs the whole
constructor under ``torch.device(device)`` (a torch function mode that puts every factory call without an explicit
device there) and with ``dtype`` as torch's default floating-point dtype (restored afterwards, also on error). Tensors
are therefore created, and initialised, on the device and in the dtype asked for: no float32 copy on the CPU first,
and the meta device allocates nothing. Explicit ``device=`` / ``dtype=`` arguments inside the constructor still win
(e.g. drop-path schedules computed in float32 on the CPU, as the official code does).

The default dtype is process-wide state, so two threads building models with different ``dtype`` at the same time
would see each other's; build models from one thread (as timm's own ``set_layer_config`` assumes too).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

__all__ = ['factory_kwargs', 'factory_scope', 'rename_kwargs', 'accepts_aliases', 'variant_args', 'DeviceLike']

DeviceLike = torch.device | str | int | None
_F = TypeVar('_F', bound=Callable[..., None])


@contextlib.contextmanager
def factory_scope(device: DeviceLike = None, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Create tensors on ``device`` and in ``dtype`` (a floating-point dtype) inside the block; None keeps the
    surrounding choice (e.g. an enclosing ``with torch.device('meta')``)."""
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f'dtype must be a floating-point dtype (e.g. torch.bfloat16), got {dtype}.')
    with contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(torch.device(device))
        if dtype is not None:
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            stack.callback(torch.set_default_dtype, previous)
        yield


def factory_kwargs(init: _F) -> _F:
    """Decorate a model ``__init__`` whose signature ends with ``device=None, dtype=None``: the constructor body runs
    inside :func:`factory_scope` with them (the body itself need not use the two arguments)."""
    sig = inspect.signature(init)
    if 'device' not in sig.parameters or 'dtype' not in sig.parameters:
        raise TypeError(f'{init.__qualname__} must declare device=None and dtype=None to use @factory_kwargs.')

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs) -> None:
        bound = sig.bind(self, *args, **kwargs)
        with factory_scope(bound.arguments.get('device'), bound.arguments.get('dtype')):
            init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def rename_kwargs(kwargs: dict, aliases: dict[str, str], owner: str) -> dict:
    """``kwargs`` with each alias key (an official code's argument name) renamed to mlpvision's name for it.

    Entry points call this on the user's kwargs *before* merging them over a variant's ``model_args``, so that an
    official name given by the user overrides the variant's value under the new name.

    Raises:
        TypeError: both an alias and the name it stands for were given.
    """
    out = dict(kwargs)
    for alias, name in aliases.items():
        if alias in out:
            if name in out:
                raise TypeError(f'{owner} got both {name}= and {alias}= (the official name for {name}); pass only '
                                f'{name}=.')
            out[name] = out.pop(alias)
    return out


def accepts_aliases(**aliases: str) -> Callable[[_F], _F]:
    """Decorate a model ``__init__`` so that it also takes each ``alias=`` (an official code's name, or a former
    mlpvision name) for the argument it names: ``@accepts_aliases(layers='depths')``. Giving both raises TypeError.
    The aliases are kept on the wrapper (``arg_aliases``) for :func:`variant_args`."""
    def decorate(init: _F) -> _F:
        @functools.wraps(init)
        def wrapper(self, *args, **kwargs) -> None:
            init(self, *args, **rename_kwargs(kwargs, aliases, type(self).__name__))

        wrapper.arg_aliases = dict(aliases)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]
    return decorate


def variant_args(cls: type, model_args: dict, kwargs: dict) -> dict:
    """A registered variant's ``model_args`` with the user's ``kwargs`` over them, the user's aliases renamed first
    (so ``layers=`` from the user replaces the variant's ``depths=`` instead of clashing with it)."""
    aliases = getattr(cls.__init__, 'arg_aliases', {})
    return dict(model_args, **rename_kwargs(kwargs, aliases, cls.__name__))
