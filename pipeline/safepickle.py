"""Reading untrusted pickles without executing anything.

A published crawl list such as the reference code's ``valid_from_flickr.pkl``
is a pickle, and unpickling runs arbitrary code. :func:`load_plain_pickle`
never calls :mod:`pickle`: it walks the opcode stream with
:func:`pickletools.genops` and interprets only the opcodes that build dicts,
lists, strings, integers, booleans and None. Any other opcode (globals,
``REDUCE``, ``BUILD``, instances, persistent ids, byte strings) is refused.
"""

from __future__ import annotations

import pickletools

#: Largest pickle accepted, bytes.
MAX_PICKLE_BYTES = 64 * 2**20

_MARK = object()


class UnsafePickleError(ValueError):
    """A pickle that uses anything beyond plain containers and scalars."""


def load_plain_pickle(data: bytes, source: str = "<pickle>") -> object:
    """Decode a pickle made only of dicts, lists, str, int, bool and None.

    Raises
    ------
    UnsafePickleError
        Naming ``source``, the refused opcode and its byte offset.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{source}: {len(data)} bytes exceeds the {MAX_PICKLE_BYTES}-byte limit")
    stack: list = []
    memo: dict[int, object] = {}

    def pop_mark() -> list:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is _MARK:
                items = stack[index + 1:]
                del stack[index:]
                return items
        raise UnsafePickleError(f"{source}: malformed pickle (no MARK)")

    try:
        for opcode, arg, position in pickletools.genops(data):
            name = opcode.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise UnsafePickleError(f"{source}: malformed pickle (stack of {len(stack)} at STOP)")
                return stack[0]
            if name == "MARK":
                stack.append(_MARK)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                _container(stack, dict, source, position)[_key(key, source, position)] = value
            elif name == "SETITEMS":
                items = pop_mark()
                target = _container(stack, dict, source, position)
                for key, value in zip(items[::2], items[1::2]):
                    target[_key(key, source, position)] = value
            elif name == "APPEND":
                value = stack.pop()
                _container(stack, list, source, position).append(value)
            elif name == "APPENDS":
                items = pop_mark()
                _container(stack, list, source, position).extend(items)
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE",
                          "BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1"):
                stack.append(arg)
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name in ("MEMOIZE",):
                memo[len(memo)] = stack[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if int(arg) not in memo:
                    raise UnsafePickleError(f"{source}: malformed pickle (unknown memo {arg})")
                stack.append(memo[int(arg)])
            elif name == "POP":
                stack.pop()
            else:
                raise UnsafePickleError(f"{source}: refused pickle opcode {name} at byte {position} "
                                        "(only dicts, lists, strings and numbers are accepted)")
    except UnsafePickleError:
        raise
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise UnsafePickleError(f"{source}: malformed pickle ({exc.__class__.__name__}: {exc})") from None
    raise UnsafePickleError(f"{source}: truncated pickle (no STOP opcode)")


def _container(stack: list, kind: type, source: str, position: int):
    if not stack or not isinstance(stack[-1], kind):
        raise UnsafePickleError(f"{source}: malformed pickle (no {kind.__name__} at byte {position})")
    return stack[-1]


def _key(key: object, source: str, position: int) -> object:
    if not isinstance(key, (str, int)):
        raise UnsafePickleError(f"{source}: dict key of type {type(key).__name__} at byte {position}")
    return key
