"""Plain data on the wire: JSON with type tags, and length-prefixed frames.

Shared by the candidate's runner (which may be tampered with, so nothing relies
on it) and the trusted checker (whose strict decoder only ever builds genuine
builtin values). Not imported at run time: `tarpo.sandbox` puts this file's text
in place of the `from .codec import ...` line of runner.py and checker.py (see
__init__.py), so it must stay free of imports from the package and of
`from __future__` imports.
"""

import json as _json

_MAX_MSG = 16 * 2**20

def _enc(x):
    t = type(x)  # exact types: a subclass could override __eq__
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return ["int", format(x, "x")]  # hex: no limit on digits
    if t is float:
        return ["float", repr(x)]
    if t is complex:
        return ["complex", repr(x.real), repr(x.imag)]
    if t is bytes:
        return ["bytes", x.hex()]
    if t in (list, tuple, set, frozenset):
        return [t.__name__, [_enc(v) for v in x]]
    if t is dict:
        return ["dict", [[_enc(k), _enc(v)] for k, v in x.items()]]
    raise TypeError("not plain data: %s" % t.__name__)

_SEQ = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}

def _dec(x):
    if x is None or type(x) is bool or type(x) is str:
        return x
    if type(x) is not list or not x or type(x[0]) is not str:
        raise ValueError("malformed value")
    tag, args = x[0], x[1:]
    if tag == "int" and len(args) == 1 and type(args[0]) is str:
        return int(args[0], 16)
    if tag == "float" and len(args) == 1 and type(args[0]) is str:
        return float(args[0])
    if tag == "complex" and len(args) == 2 and all(type(a) is str for a in args):
        return complex(float(args[0]), float(args[1]))
    if tag == "bytes" and len(args) == 1 and type(args[0]) is str:
        return bytes.fromhex(args[0])
    if tag in _SEQ and len(args) == 1 and type(args[0]) is list:
        return _SEQ[tag](_dec(v) for v in args[0])
    if tag == "dict" and len(args) == 1 and type(args[0]) is list:
        out = {}
        for pair in args[0]:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict")
            out[_dec(pair[0])] = _dec(pair[1])
        return out
    raise ValueError("unknown tag")

def _frame(obj):
    data = _json.dumps(obj).encode()
    return len(data).to_bytes(4, "big") + data
