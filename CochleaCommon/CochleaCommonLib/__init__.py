"""CochleaCommonLib: the pure-Python core shared by every CochleaToolkit module.

Nothing in this package imports ``slicer``, ``qt`` or ``ctk`` except :mod:`.slicer_io`, the one
adapter between MRML nodes and the plain data types defined here. Everything else runs in plain
CPython with numpy, SimpleITK and vtk; torch is imported lazily where needed.
"""

__version__ = "0.1.0"
