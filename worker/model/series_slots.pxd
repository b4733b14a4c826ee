# Where a slots dataclass keeps a field: the compiled modules read and write Series fields at
# their slots (worker/otlp/_encode.pyx, state/_fold.pyx). Inline: compiled into each user.

from cpython.object cimport PyObject


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member


cdef inline Py_ssize_t slot_offset(object cls, str name):
    """The byte offset of field ``name`` in instances of ``cls`` when it is a plain object slot of
    ``cls`` itself (a member descriptor of type T_OBJECT_EX); -1 for anything else."""
    descriptor = cls.__dict__.get(name)
    if type(descriptor).__name__ != "member_descriptor" or descriptor.__objclass__ is not cls:
        return -1
    member = (<PyMemberDescrObject*><PyObject*>descriptor).d_member
    if member.type != 16:  # T_OBJECT_EX: a slot
        return -1
    return member.offset
