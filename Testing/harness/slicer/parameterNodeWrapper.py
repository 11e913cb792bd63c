"""Headless subset of Slicer's ``slicer.parameterNodeWrapper`` (not shipped in ``slicer-core``).

Why: module files declare their state as a typed ``@parameterNodeWrapper`` class, as the Slicer
template does. Slicer's real wrapper needs Qt (for GUI binding); its *storage* is plain MRML: a
``vtkMRMLScriptedModuleNode`` with string parameters and node references. This file is our own
implementation of that storage for the field types our modules use, writing the very same
strings Slicer writes, so a scene saved here loads into Slicer with the same values:

* ``int`` / ``float``: ``str(value)``; ``bool``: ``"True"``/``"False"``; ``str``: as is;
  ``pathlib.Path``: ``str(path)``.
* ``vtkMRML*Node`` subclasses: an empty parameter of the same name plus a node reference
  (``SetNodeReferenceID``), read back with ``GetNodeReference``.
* ``Annotated[T, WithinRange(a, b) | Minimum | Maximum | Choice | Exclude | Default(...)]``:
  the validators really validate (``ValueError``/``TypeError``, as in Slicer), on every write.
* Defaults: the class attribute value, else ``Default(...)`` in ``Annotated``, else 0/""/False/None.
  Defaults are written into the node when a wrapper is built over it, as Slicer does.

Unsupported (raises ``TypeError`` at class definition, so nobody relies on it silently): lists,
tuples, dicts, enums, unions, parameter packs, custom serializers. ``connectGui`` and friends need
Qt widgets and raise ``RuntimeError``.

Note: slicer-core copies the public names of this module onto ``slicer``, so after ``import
slicer`` the attribute ``slicer.parameterNodeWrapper`` is the decorator function, while
``from slicer.parameterNodeWrapper import parameterNodeWrapper, WithinRange`` still imports from
this module (through ``sys.modules``). Module-level imports are underscored for that reason.
"""

import pathlib as _pathlib
import typing as _typing

__all__ = [
    "parameterNodeWrapper",
    "isParameterNodeWrapper",
    "SlicerParameterNamePropertyName",
    "Default",
    "Validator",
    "NotNone",
    "IsInstance",
    "WithinRange",
    "Minimum",
    "Maximum",
    "Choice",
    "Exclude",
]

SlicerParameterNamePropertyName = "SlicerParameterName"

_PATH_TYPES = (_pathlib.Path, _pathlib.PurePath, _pathlib.PosixPath, _pathlib.PurePosixPath)


# --- validators (same names and exception types as Slicer's) --------------------------------
class Validator:
    """Base class of validators placed in ``Annotated[...]``."""

    def validate(self, value) -> None:
        """Raise ``ValueError`` (or ``TypeError``) when ``value`` is not allowed."""
        raise NotImplementedError


class NotNone(Validator):
    """The value must not be None."""

    def validate(self, value) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class IsInstance(Validator):
    """The value must be an instance of ``classtype`` (None passes; use NotNone to forbid it)."""

    def __init__(self, classtype) -> None:
        self.classtype = classtype

    def validate(self, value) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class WithinRange(Validator):
    """``minimum <= value <= maximum`` (inclusive)."""

    def __init__(self, minimum, maximum) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def __repr__(self) -> str:
        return f"WithinRange({self.minimum}, {self.maximum})"

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Minimum(Validator):
    """``value >= minimum``."""

    def __init__(self, minimum) -> None:
        self.minimum = minimum

    def validate(self, value) -> None:
        if value < self.minimum:
            raise ValueError(f"Value must be at least {self.minimum}, is {value}")


class Maximum(Validator):
    """``value <= maximum``."""

    def __init__(self, maximum) -> None:
        self.maximum = maximum

    def validate(self, value) -> None:
        if value > self.maximum:
            raise ValueError(f"Value must be at most {self.maximum}, is {value}")


class Choice(Validator):
    """The value must be one of ``choices``."""

    def __init__(self, choices) -> None:
        self.choices = choices

    def __repr__(self) -> str:
        return f"Choice({self.choices})"

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class Exclude(Validator):
    """The value must not be one of ``excludedValues``."""

    def __init__(self, excludedValues) -> None:
        self.excludedValues = excludedValues

    def validate(self, value) -> None:
        if value in self.excludedValues:
            raise ValueError(f"Value is {value}, but must not be an excluded value: {self.excludedValues}")


class Default:
    """Default value given inside ``Annotated[...]`` instead of as a class attribute."""

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Default({self.value!r})"


# --- serializers: the strings Slicer's own serializers write ------------------------------------
class _Serializer:
    def __init__(self, type_) -> None:
        self.type = type_

    def default(self):
        raise NotImplementedError

    def isIn(self, node, name: str) -> bool:
        return node.HasParameter(name)

    def write(self, node, name: str, value) -> None:
        node.SetParameter(name, str(value))

    def read(self, node, name: str):
        raise NotImplementedError

    def remove(self, node, name: str) -> None:
        node.UnsetParameter(name)


class _NumberSerializer(_Serializer):
    def default(self):
        return 0

    def read(self, node, name: str):
        return self.type(node.GetParameter(name))


class _StringSerializer(_Serializer):
    def default(self):
        return ""

    def read(self, node, name: str):
        return node.GetParameter(name)


class _PathSerializer(_Serializer):
    def default(self):
        return self.type()

    def read(self, node, name: str):
        return self.type(node.GetParameter(name))


class _BoolSerializer(_Serializer):
    def default(self):
        return False

    def write(self, node, name: str, value) -> None:
        node.SetParameter(name, "True" if value else "False")

    def read(self, node, name: str):
        return node.GetParameter(name) == "True"


class _NodeSerializer(_Serializer):
    def default(self):
        return None

    def write(self, node, name: str, value) -> None:
        # None is a valid value, so an (empty) parameter of the same name marks "is set" (as Slicer).
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)

    def read(self, node, name: str):
        return node.GetNodeReference(name)

    def remove(self, node, name: str) -> None:
        node.UnsetParameter(name)
        node.RemoveNodeReferenceIDs(name)


def _isMRMLNodeClass(type_) -> bool:
    import slicer

    return isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode)


def _makeSerializer(type_, fieldName: str, className: str):
    """Serializer and its implicit validators for ``type_`` (those Slicer adds, e.g. NotNone)."""
    if type_ is bool:
        return _BoolSerializer(bool), [NotNone(), IsInstance(bool)]
    if type_ in (int, float):
        return _NumberSerializer(type_), [NotNone(), IsInstance((int, float) if type_ is float else int)]
    if type_ is str:
        return _StringSerializer(str), [NotNone(), IsInstance(str)]
    if type_ in _PATH_TYPES:
        return _PathSerializer(type_), [NotNone(), IsInstance(type_)]
    if _isMRMLNodeClass(type_):
        return _NodeSerializer(type_), [IsInstance(type_)]
    raise TypeError(
        f"{className}.{fieldName}: type {type_!r} is not supported by the headless parameterNodeWrapper "
        "(int, float, bool, str, pathlib.Path and vtkMRML*Node only). Extend "
        "Testing/harness/slicer/parameterNodeWrapper.py if a module needs it."
    )


class _Parameter:
    """One typed field: its serializer, validators and default."""

    def __init__(self, name: str, unalteredType, type_, serializer, validators, default) -> None:
        self.name = name
        self.unalteredType = unalteredType
        self.type = type_
        self.serializer = serializer
        self.validators = validators
        self.default = default

    def validate(self, value) -> None:
        for validator in self.validators:
            validator.validate(value)

    def write(self, node, value) -> None:
        self.validate(value)
        self.serializer.write(node, self.name, value)

    def read(self, node):
        if not self.serializer.isIn(node, self.name):
            self.serializer.write(node, self.name, self.default.value)
        return self.serializer.read(node, self.name)


def _splitAnnotations(annotated):
    if _typing.get_origin(annotated) is _typing.Annotated:
        args = _typing.get_args(annotated)
        return args[0], list(args[1:])
    return annotated, []


def _makeProperty(name: str) -> property:
    def getter(self):
        return self.allParameters[name].read(self.parameterNode)

    def setter(self, value) -> None:
        self.allParameters[name].write(self.parameterNode, value)

    return property(getter, setter, doc=f"Typed parameter '{name}' stored in the wrapped parameter node.")


def _initMethod(self, parameterNode) -> None:
    if parameterNode is None:
        raise ValueError(f"{type(self).__name__} needs a vtkMRMLScriptedModuleNode, got None")
    self.parameterNode = parameterNode
    for parameter in self.allParameters.values():
        if not parameter.serializer.isIn(parameterNode, parameter.name):
            parameter.serializer.write(parameterNode, parameter.name, parameter.default.value)


def _checkParamName(self, name: str) -> None:
    if name not in self.allParameters:
        raise ValueError(f"Cannot find a param with the given name: {name}; found {sorted(self.allParameters)}")


def _getValue(self, name: str):
    _checkParamName(self, name)
    return getattr(self, name)


def _setValue(self, name: str, value) -> None:
    _checkParamName(self, name)
    setattr(self, name, value)


def _default(self, name: str) -> Default:
    _checkParamName(self, name)
    return self.allParameters[name].default


def _needsQt(self, *args, **kwargs):
    raise RuntimeError("GUI binding (connectGui/disconnectGui) needs Slicer's Qt widgets; not available headless.")


def _processClass(classtype):
    hints = _typing.get_type_hints(classtype, include_extras=True)
    allParameters = {}
    for name, annotated in hints.items():
        type_, annotations = _splitAnnotations(annotated)
        serializer, validators = _makeSerializer(type_, name, classtype.__name__)
        defaults = [a for a in annotations if isinstance(a, Default)]
        userValidators = [a for a in annotations if isinstance(a, Validator)]
        unused = [a for a in annotations if not isinstance(a, (Default, Validator))]
        if unused:
            raise TypeError(f"{classtype.__name__}.{name}: unsupported annotations {unused!r} in the headless wrapper")
        if name in classtype.__dict__:
            default = Default(classtype.__dict__[name])
        elif defaults:
            default = defaults[0]
        else:
            default = Default(serializer.default())
        parameter = _Parameter(name, annotated, type_, serializer, validators + userValidators, default)
        if default.value is not None or not isinstance(serializer, _NodeSerializer):
            parameter.validate(default.value)  # a default outside WithinRange is a bug in the module
        allParameters[name] = parameter
        setattr(classtype, name, _makeProperty(name))

    reserved = {
        "allParameters": allParameters,
        "_is_parameter_node_wrapper": True,
        "default": _default,
        "getValue": _getValue,
        "setValue": _setValue,
        "dataType": staticmethod(lambda name: allParameters[name].unalteredType),
        "isCached": lambda self, name: False,
        "connectGui": _needsQt,
        "connectParametersToGui": _needsQt,
        "disconnectGui": _needsQt,
        "StartModify": lambda self: self.parameterNode.StartModify(),
        "EndModify": lambda self, wasModified: self.parameterNode.EndModify(wasModified),
        "AddObserver": lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback,
                                                                                                  priority),
        "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag),
        "Modified": lambda self: self.parameterNode.Modified(),
    }
    for attr, value in reserved.items():
        if attr in classtype.__dict__:
            raise ValueError(f"Cannot use reserved name '{attr}' in a parameterNodeWrapper")
        setattr(classtype, attr, value)
    classtype.__init__ = _initMethod
    return classtype


def isParameterNodeWrapper(classOrObj) -> bool:
    """Whether ``classOrObj`` is (an instance of) a class decorated with ``@parameterNodeWrapper``."""
    return getattr(classOrObj, "_is_parameter_node_wrapper", False)


def parameterNodeWrapper(classtype=None):
    """Class decorator: typed properties stored in a ``vtkMRMLScriptedModuleNode`` (headless subset)."""

    def wrap(cls):
        return _processClass(cls)

    if classtype is None:
        return wrap
    return wrap(classtype)
