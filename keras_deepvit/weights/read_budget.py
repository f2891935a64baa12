"""What an untrusted checkpoint may cost to read: memory and time bounded by its size.

A checkpoint is data from anywhere, so its sizes are claims to check, not
facts. Two guards, used by `read_checkpoint`:

- `ReadBudget`: the bytes of tensor data the reader may build beyond what the
  file holds. A 652-byte file can describe a tensor of 2**28 elements that all
  view one stored float (stride 0), or one storage copied out by 64 tensors;
  every tensor copy and every decompressed zip record is charged here first,
  and a file that would go over gets a ValueError instead of the memory. The
  default limit, `default_limit`, is twice the file's size (bfloat16 widens to
  float32) plus `ALLOWANCE` (64 MiB, for small tensors that legitimately
  repeat a storage, such as ``torch.arange(3).expand(4, 3)``).
- `scan_pickle`: one linear pass over a pickle's opcodes before it is
  unpickled, refusing what would make the C unpickler itself allocate or crash:
  lengths that reach past the end of the data (the unpickler allocates them
  before reading), memo indices far beyond the pickle's size (the memo is an
  array as long as its largest index), and containers nested more than
  `MAX_NESTING` levels (hashing a tuple nested 100,000 deep, as a dict key
  does, overflows the C stack: a segfault, not an exception).
"""

import pickletools
import struct

from keras_deepvit.weights.restricted_unpickler import MalformedPickle

#: Bytes of tensor data a file may make us build beyond twice its size.
ALLOWANCE = 64 * 2**20
#: Deepest container nesting accepted in a pickle; real checkpoints (a whole
#: pickled nn.Module included) nest a few dozen levels.
MAX_NESTING = 256


def human_bytes(nbytes):
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes} bytes" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return None  # unreachable


def default_limit(file_size):
    """The default `ReadBudget` limit for a file of ``file_size`` bytes."""
    return 2 * file_size + ALLOWANCE


class ReadBudget:
    """Bytes the reader may still build; `take` them before allocating.

    Args:
        file_size: the checkpoint's size in bytes.
        limit: the budget in bytes; None for `default_limit`.

    Example:
    >>> budget = ReadBudget(1000, limit=100)
    >>> budget.take(60, "tensor 'a'")
    >>> budget.take(60, "tensor 'b'")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    keras_deepvit.weights.restricted_unpickler.MalformedPickle: tensor 'b' needs 60 bytes, beyond the read budget of 100 bytes ...
    """

    def __init__(self, file_size, limit=None):
        self.limit = default_limit(file_size) if limit is None else int(limit)
        self.used = 0

    def take(self, nbytes, what):
        if self.used + nbytes > self.limit:
            raise MalformedPickle(
                f"{what} needs {human_bytes(nbytes)}, beyond the read budget of {human_bytes(self.limit)} "
                f"({human_bytes(self.used)} already used; the default is 2 x the file's size + "
                f"{human_bytes(ALLOWANCE)}): the file describes far more tensor data than it holds "
                "(a view repeating its storage, stride 0 or overlapping strides, a storage copied by "
                "many tensors, or a compressed record). If you trust the file, pass a larger "
                "max_bytes to read_checkpoint"
            )
        self.used += nbytes


_MARK = None
_OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_LENGTH_FORMATS = {
    pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
    pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q",
}
_LEAVES = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "NEXT_BUFFER",
    "NONE", "NEWTRUE", "NEWFALSE", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "FLOAT", "BINFLOAT", "GLOBAL", "PERSID", "EXT1", "EXT2", "EXT4",
}
_BUILT_FROM_MARK = {"LIST", "TUPLE", "DICT", "FROZENSET", "OBJ", "INST"}
_ADDED_FROM_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}
_BUILT_FROM = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}
_ADDED = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


class _Scan:
    """The state of one `scan_pickle` pass: a stack of nesting depths (None marks a MARK)."""

    def __init__(self, file, what, max_depth):
        self.file, self.what, self.max_depth = file, what, max_depth
        self.stack, self.marks, self.memo = [], [], {}
        self.start = file.tell()
        self.end = file.seek(0, 2)
        file.seek(self.start)

    def fail(self, problem):
        position = self.file.tell() - self.start
        raise MalformedPickle(f"malformed {self.what}: {problem} (byte {position})")

    def read(self, n):
        data = self.file.read(n)
        if len(data) != n:
            self.fail("the data ends inside an opcode (truncated)")
        return data

    def line(self):
        data = self.file.readline()
        if not data.endswith(b"\n"):
            self.fail("the data ends inside an opcode (truncated)")
        return data

    def skip(self, length, name):
        left = self.end - self.file.tell()
        if not 0 <= length <= left:
            self.fail(f"{name} declares {length} bytes but only {left} remain")
        self.file.seek(length, 1)

    def pop(self):
        if not self.stack or self.stack[-1] is _MARK:
            self.fail("stack underflow")
        return self.stack.pop()

    def pop_mark(self):
        if not self.marks:
            self.fail("no MARK to pop to")
        at = self.marks.pop()
        items = self.stack[at + 1:]
        del self.stack[at:]
        return items

    def push(self, depth):
        if depth > self.max_depth:
            self.fail(
                f"containers nested more than {self.max_depth} levels deep; real checkpoints nest "
                "a few dozen at most"
            )
        self.stack.append(depth)

    def deepen_top(self, items):
        top = self.pop()
        self.push(max([top] + [d + 1 for d in items]))

    def memo_index(self, op, arg):
        return int(arg) if op.arg.n == pickletools.UP_TO_NEWLINE else int.from_bytes(arg, "little")

    def step(self, op, arg, count):
        name = op.name
        if name in _LEAVES:
            self.push(0)
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
            self.push(1)
        elif name == "MARK":
            self.marks.append(len(self.stack))
            self.stack.append(_MARK)
        elif name in _BUILT_FROM_MARK:
            self.push(1 + max(self.pop_mark(), default=0))
        elif name in _ADDED_FROM_MARK:
            self.deepen_top(self.pop_mark())
        elif name in _BUILT_FROM:
            self.push(1 + max(self.pop() for _ in range(_BUILT_FROM[name])))
        elif name in _ADDED:
            self.deepen_top([self.pop() for _ in range(_ADDED[name])])
        elif name == "STACK_GLOBAL":
            self.pop(), self.pop()
            self.push(0)
        elif name == "BINPERSID":
            self.pop()
            self.push(0)
        elif name == "POP":
            if self.stack and self.stack[-1] is _MARK:
                self.pop_mark()
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.push(self.pop())
            self.push(self.stack[-1])
        elif name == "READONLY_BUFFER":
            self.push(self.pop())
        elif name in _MEMO_PUT or name == "MEMOIZE":
            index = len(self.memo) if name == "MEMOIZE" else self.memo_index(op, arg)
            if index > count:
                # The C unpickler's memo is an array as long as the largest index.
                self.fail(f"memo index {index} is larger than the pickle")
            self.push(self.pop())
            self.memo[index] = self.stack[-1]
        elif name in _MEMO_GET:
            index = self.memo_index(op, arg)
            if index not in self.memo:
                self.fail(f"memo index {index} was never stored")
            self.push(self.memo[index])
        elif name == "FRAME":
            (length,) = struct.unpack("<Q", arg)
            if length > self.end - self.file.tell():
                self.fail(f"a frame of {length} bytes reaches past the end of the data")
        # PROTO: nothing to check.

    def run(self):
        count = 0
        while True:
            code = self.file.read(1)
            if not code:
                self.fail("the data ends before the STOP opcode (truncated)")
            op = _OPS.get(code)
            if op is None:
                self.fail(f"unknown opcode {code!r}")
            count += 1
            arg = None
            if op.arg is not None:
                n = op.arg.n
                if n > 0:
                    arg = self.read(n)
                elif n == pickletools.UP_TO_NEWLINE:
                    arg = self.line()
                    if op.name in ("GLOBAL", "INST"):
                        self.line()
                    elif op.name in _MEMO_PUT | _MEMO_GET and len(arg) > 21:
                        self.fail("a memo index longer than 20 digits")
                else:
                    fmt = _LENGTH_FORMATS[n]
                    (length,) = struct.unpack(fmt, self.read(struct.calcsize(fmt)))
                    self.skip(length, op.name)
            if op.name == "STOP":
                return
            self.step(op, arg, count)


def scan_pickle(file, what="pickle", max_depth=MAX_NESTING):
    """Check a pickle's opcodes before unpickling it; the file is left where it was.

    Args:
        file: a seekable binary file positioned at the pickle.
        what: a name for it in error messages.
        max_depth: deepest container nesting accepted.

    Raises:
        MalformedPickle: truncated, unknown opcodes, a stack underflow, a
            length past the end of the data, a memo index beyond the pickle's
            size, or nesting deeper than ``max_depth``.

    Example:
    >>> import io, pickle
    >>> scan_pickle(io.BytesIO(pickle.dumps({"w": [1, (2, 3)]})))
    >>> scan_pickle(io.BytesIO(pickle.dumps([[[[1]]]])), max_depth=3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    keras_deepvit.weights.restricted_unpickler.MalformedPickle: malformed pickle: containers nested more than 3 levels deep; ...
    """
    scan = _Scan(file, what, max_depth)
    try:
        scan.run()
    except (ValueError, KeyError, IndexError, struct.error) as exc:
        if isinstance(exc, MalformedPickle):
            raise
        scan.fail(f"unreadable opcode argument ({type(exc).__name__}: {exc})")
    finally:
        file.seek(scan.start)
