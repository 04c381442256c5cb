"""Loads and stores: each access kind (access.py) as LLVM memory operations.

A scalar access is one element; a contiguous one a vector load or store, masked when guards
disable lanes; strided and repeated reads are one masked load and a shuffle; a gather or
scatter has one address per lane. Masked-off lanes never touch memory, and masked reads fill
them with zeros. Register tiles (`local` buffers) are whole stack arrays, so every lane of
one exists: they are read whole and written by blending, which keeps them in registers.
"""
from __future__ import annotations

from dataclasses import replace

from llvmlite import ir

from .access import Access, access_kind
from .checks import check_bounds, report
from .exprs import ExprEmitter
from .types import FLOAT, I1, I32, I64, is_vec, vconst, vname


class MemoryEmitter(ExprEmitter):
    """Expressions and memory of one function over the buffers `bufs` (name -> pointer)."""

    def __init__(self, m, fn, bufs: dict, shapes: dict, ft, locals_: list[str], checks: str | None):
        super().__init__(m, fn, shapes, ft)
        self.bufs = bufs
        self.locals_ = locals_  # register tiles (stack arrays) of this function
        self.checks = checks  # the kernel's name, in the debug build

    def report(self, text: bytes, values: list[ir.Value]) -> None:
        """Print text (a C format of `values`) and stop the program: a failed bounds check."""
        report(self.m, self.b, text, values)

    def access(self, buf: str, index) -> Access:
        return access_kind(self.shapes[buf], index, self.vec[0] if self.vec else None)

    def pointer(self, buf: str, a: Access) -> ir.Value:
        """Where the access goes: the element of a scalar access; lane 0's element as a pointer
        to the vector read (W elements, or W * stride for a strided read); for a gather the
        vector of each lane's element offset."""
        base = self.bufs[buf]
        if a.kind == "gather":
            return self.splat(self.int(a.linear))
        p = self.b.gep(base, [self.int(a.start)], inbounds=True)
        if a.kind == "scalar":
            return p
        n = self.width * a.stride if a.kind == "strided" else self.width
        return self.b.bitcast(p, ir.VectorType(self.ft, n).as_pointer())

    def load(self, buf: str, index) -> ir.Value:
        a = self.access(buf, index)
        p = self.pointer(buf, a)
        b, W = self.b, self.width
        if self.checks:  # the lanes read: all of a scalar or register-tile read, else the enabled ones
            whole = a.kind == "scalar" or (a.kind == "contiguous" and buf in self.locals_)
            check_bounds(self, self.checks, "load from", buf, index, None if whole else self.mask)
        if a.kind == "scalar":
            return b.load(p)
        if a.kind == "repeated":
            return self._load_repeated(p, *a.repeat)
        if a.kind == "strided":
            return self._load_strided(p, a.stride)
        vt = ir.VectorType(self.ft, W)
        zero = vconst(vt, (0.0,) * W)
        if a.kind == "contiguous":
            if self.mask is None or buf in self.locals_:  # a register tile: every lane exists
                ld = b.load(p)
                ld.align = 4
                return ld
            fn = self.intrinsic(f"llvm.masked.load.{vname(vt)}.p0", vt, [p.type, I32, self.mask.type, vt])
            return b.call(fn, [p, ir.Constant(I32, 4), self.mask, zero])
        # a gather: one address per lane; masked-off lanes are not read
        fn = self.intrinsic(f"llvm.masked.gather.{vname(vt)}.v{W}p0", vt,
                            [ir.VectorType(self.ft.as_pointer(), W), I32, ir.VectorType(I1, W), vt])
        return b.call(fn, [self._lane_ptrs(buf, p), ir.Constant(I32, 4), self._mask_or_all(), zero])

    def _load_repeated(self, p: ir.Value, s: int, k: int) -> ir.Value:
        """Lane i takes element (i + k) // s after p: the elements read, then repeated."""
        b, W = self.b, self.width
        n = (W - 1 + k) // s + 1  # elements read
        groups = [[i for i in range(W) if (i + k) // s == j] for j in range(W)]
        if self.mask is None:
            keep = vconst(ir.VectorType(I1, W), tuple(1 if j < n else 0 for j in range(W)))
        else:
            keep = vconst(ir.VectorType(I1, W), (0,) * W)
            for slot in range(s):  # element j is read if any lane of its group is enabled
                pick = [g[slot] if slot < len(g) else W for g in groups]
                lanes = b.shuffle_vector(self.mask, vconst(self.mask.type, (0,) * W),
                                         vconst(ir.VectorType(I32, W), tuple(pick)))
                keep = b.or_(keep, lanes)
        vt = ir.VectorType(self.ft, W)
        fn = self.intrinsic(f"llvm.masked.load.{vname(vt)}.p0", vt, [p.type, I32, keep.type, vt])
        got = b.call(fn, [p, ir.Constant(I32, 4), keep, vconst(vt, (0.0,) * W)])
        return b.shuffle_vector(got, ir.Constant(vt, ir.Undefined),
                                vconst(ir.VectorType(I32, W), tuple((i + k) // s for i in range(W))))

    def _load_strided(self, p: ir.Value, s: int) -> ir.Value:
        """Lane i takes element i * s after p: one wide masked load, then every s-th element."""
        b, W = self.b, self.width
        wide = ir.VectorType(self.ft, W * s)
        lanes = vconst(ir.VectorType(I32, W), tuple(k * s for k in range(W)))
        # element k*s of the wide load is lane k; only those elements are read
        if self.mask is None:
            keep = vconst(ir.VectorType(I1, W * s), tuple(1 if e % s == 0 else 0 for e in range(W * s)))
        else:
            spread = vconst(ir.VectorType(I32, W * s), tuple(e // s for e in range(W * s)))
            every = b.shuffle_vector(self.mask, ir.Constant(self.mask.type, ir.Undefined), spread)
            keep = b.and_(every, vconst(ir.VectorType(I1, W * s),
                                        tuple(1 if e % s == 0 else 0 for e in range(W * s))))
        fn = self.intrinsic(f"llvm.masked.load.{vname(wide)}.p0", wide, [p.type, I32, keep.type, wide])
        got = b.call(fn, [p, ir.Constant(I32, 4), keep, vconst(wide, (0.0,) * (W * s))])
        return b.shuffle_vector(got, ir.Constant(wide, ir.Undefined), lanes)

    def store(self, buf: str, index, value: ir.Value, masked: bool = True) -> None:
        """buf[index] = value; masked=False writes every lane of a register tile, unblended."""
        a = self.access(buf, index)
        if a.kind in ("strided", "repeated"):  # those are shapes of reads: written, a scatter
            a = replace(a, kind="gather")
        p = self.pointer(buf, a)
        b, W = self.b, self.width
        if self.checks:
            whole = a.kind == "scalar" or (a.kind == "contiguous" and (buf in self.locals_ or not masked))
            check_bounds(self, self.checks, "store to", buf, index, None if whole else self.mask)
        if a.kind == "scalar":
            if is_vec(value):
                raise NotImplementedError(f"vector store to one element of {buf} (a reduction across lanes)")
            b.store(value, p)
            return
        value = self.splat(value)
        if a.kind == "contiguous":
            if self.mask is not None and buf in self.locals_ and masked:
                # a register tile: blend instead of a masked store, which would keep it in memory
                old = b.load(p)
                old.align = 4
                value = b.select(self.mask, value, old)
            if self.mask is None or buf in self.locals_ or not masked:
                st = b.store(value, p)
                st.align = 4
                return
            fn = self.intrinsic(f"llvm.masked.store.{vname(value.type)}.p0", ir.VoidType(),
                                [value.type, p.type, I32, self.mask.type])
            b.call(fn, [value, p, ir.Constant(I32, 4), self.mask])
            return
        # a scatter: lanes write in order, so where two lanes share an element the later wins
        fn = self.intrinsic(f"llvm.masked.scatter.{vname(value.type)}.v{W}p0", ir.VoidType(),
                            [value.type, ir.VectorType(self.ft.as_pointer(), W), I32, ir.VectorType(I1, W)])
        b.call(fn, [value, self._lane_ptrs(buf, p), ir.Constant(I32, 4), self._mask_or_all()])

    def _lane_ptrs(self, buf: str, idx: ir.Value) -> ir.Value:
        """<W x T*>: the address of element idx[lane] of buf, per lane."""
        b, W = self.b, self.width
        size = ir.Constant(I64, 4 if self.ft == FLOAT["f32"] else 8)
        base = self.splat(b.ptrtoint(self.bufs[buf], I64))
        if idx.type.element != I64:
            idx = b.sext(idx, ir.VectorType(I64, W))
        addr = b.add(base, b.mul(idx, self.splat(size)))
        return b.inttoptr(addr, ir.VectorType(self.ft.as_pointer(), W))

    def _mask_or_all(self) -> ir.Value:
        W = self.width
        return self.mask if self.mask is not None else vconst(ir.VectorType(I1, W), (1,) * W)
