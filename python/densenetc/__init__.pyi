import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import numpy.typing as npt

HEADS: Tuple[str, ...]
_T = TypeVar("_T")
ProgressArg = Union[None, bool, Callable[[str, str], None]]
PathLike = Union[str, "os.PathLike[str]"]

def presets() -> List[str]: ...

class Model:
    """A compiled DenseNet; thread-safe (a pool of runtime sessions, GIL released while running)."""
    @property
    def input_shape(self) -> Tuple[int, ...]: ...
    @property
    def output_shape(self) -> Tuple[int, ...]: ...
    @property
    def labels(self) -> Optional[List[str]]: ...
    @property
    def sessions(self) -> int: ...
    @property
    def cpu_variant(self) -> Optional[str]: ...
    @property
    def manifest(self) -> Dict[str, Any]: ...
    @property
    def last_input_address(self) -> int: ...
    def run(self, x: Any) -> Any:
        """float32 NCHW numpy array (or CPU torch tensor) of input_shape -> float32 output."""
    def __call__(self, x: Any) -> Any: ...
    def save(self, path: PathLike) -> None: ...

def load(
    path: PathLike, device: str = "cpu", threads: Optional[int] = None, cpu: Optional[str] = None
) -> Model: ...
def compile(
    model: Any,
    *,
    batch: int = 1,
    image_size: Optional[int] = None,
    target: str = "cpu",
    precision: str = "fp32",
    cpu: str = "native",
    head: Optional[str] = None,
    threads: Optional[int] = None,
    arch: Union[None, str, Dict[str, Any]] = None,
    labels: Optional[Sequence[str]] = None,
    progress: ProgressArg = None,
) -> Model: ...
def compile_random(
    arch: Union[str, Dict[str, Any]],
    *,
    seed: int = 0,
    batch: int = 1,
    image_size: Optional[int] = None,
    target: str = "cpu",
    precision: str = "fp32",
    cpu: str = "native",
    head: Optional[str] = None,
    threads: Optional[int] = None,
    progress: ProgressArg = None,
) -> Model: ...
