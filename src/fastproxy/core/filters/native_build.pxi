# Building the native HTTP filters' configs (main thread, GIL): _NfBuild allocates a config
# struct and everything it points at (freed together by _nf_destroy_config) and compiles its
# string/header matchers with the router's _MatchBuilder (core/router/build.pxi), so the
# filters and the routes share one matcher and one regex policy.

cdef class _NfBuild(_MatchBuilder):
    """Allocates into one config struct's NOwned; on an error the caller frees it all.
    Matchers are built by _MatchBuilder (core/router/build.pxi), the same as the routes'."""
    cdef NOwned* o
    cdef str path

    cdef void* alloc(self, size_t n) except NULL:
        cdef void** nv
        cdef void* p
        if self.o.n == self.o.cap:
            nv = <void**>realloc(self.o.p, (self.o.cap * 2 + 8) * sizeof(void*))
            if nv == NULL:
                raise MemoryError()
            self.o.p = nv
            self.o.cap = self.o.cap * 2 + 8
        p = calloc(1, max(1, n))
        if p == NULL:
            raise MemoryError()
        self.o.p[self.o.n] = p
        self.o.n += 1
        return p

    cdef const char* bytes_(self, object value, size_t* n, bint lower=False) except NULL:
        cdef bytes b
        cdef char* p
        if isinstance(value, str):
            try:
                b = (<str>value).encode("latin-1")
            except UnicodeEncodeError:
                raise ConfigError(self.path, f"{value!r} is not latin-1") from None
        elif isinstance(value, bytes):
            b = <bytes>value
        else:
            raise ConfigError(self.path, f"expected a string, got {type(value).__name__}")
        if lower:
            b = b.lower()
        p = <char*>self.alloc(len(b) + 1)
        memcpy(p, <char*>b, len(b))
        p[len(b)] = 0
        n[0] = len(b)
        return p

    cdef NHdrOp* ops(self, list items, int* n, str path) except? NULL:
        """HeaderMutationOp / HeaderValueOption list -> NHdrOp array."""
        from fastproxy.http.model import HeaderValueOption
        from fastproxy.http.native_filters import HeaderMutationOp
        cdef NHdrOp* out
        cdef int i
        n[0] = len(items)
        if not items:
            return NULL
        out = <NHdrOp*>self.alloc(len(items) * sizeof(NHdrOp))
        for i, item in enumerate(items):
            ipath = f"{path}[{i}]"
            if isinstance(item, HeaderMutationOp):
                if (item.append is None) == (item.remove is None):
                    raise ConfigError(ipath, "exactly one of append or remove must be set")
                if item.remove is not None:
                    self.path = ipath + ".remove"
                    out[i].action = RHO_REMOVE
                    out[i].name = self.bytes_(item.remove, &out[i].nn, True)
                    continue
                item = item.append
                ipath += ".append"
            if not isinstance(item, HeaderValueOption):
                raise ConfigError(ipath, f"expected a HeaderValueOption, got {type(item).__name__}")
            action = _RT_APPEND_ACTIONS.get(item.append_action)
            if action is None:
                raise ConfigError(ipath + ".append_action", f"unknown append_action {item.append_action!r}")
            out[i].action = action
            self.path = ipath + ".header.key"
            out[i].name = self.bytes_(item.key, &out[i].nn, True)
            self.path = ipath + ".header.value"
            out[i].value = self.bytes_(item.value, &out[i].vn)
        return out


cdef int _nf_percent(NPercent* p, object fp, str path) except -1:
    from fastproxy.http.native_filters import FractionalPercent, DENOMINATORS
    if fp is None:
        p.numerator = 0
        p.denominator = 100
        return 0
    if not isinstance(fp, FractionalPercent):
        raise ConfigError(path, f"expected a FractionalPercent, got {type(fp).__name__}")
    d = DENOMINATORS.get(fp.denominator)
    if d is None:
        raise ConfigError(path + ".denominator", f"expected one of {', '.join(DENOMINATORS)}, got {fp.denominator!r}")
    if not isinstance(fp.numerator, int) or not 0 <= fp.numerator <= 0xffffffff:
        raise ConfigError(path + ".numerator", f"expected an unsigned 32-bit integer, got {fp.numerator!r}")
    p.numerator = fp.numerator
    p.denominator = d
    return 0


cdef _NfBuild _nf_new(size_t size, int regex_copies):
    """A zeroed config struct of `size` bytes (its first member an NOwned), at .o; its
    regexes compiled regex_copies times (one per worker: the router's policy)."""
    from fastproxy.config.regex import re2_to_posix
    cdef void* p = calloc(1, size)
    cdef _NfBuild b
    if p == NULL:
        raise MemoryError()
    b = _NfBuild.__new__(_NfBuild)
    b.o = <NOwned*>p
    b.path = ""
    b.regex_copies = max(1, regex_copies)
    b.regexes = &b.o.regexes
    b.re2_to_posix = re2_to_posix
    return b


cdef _nf_expect(object config, object cls, str kind):
    if not isinstance(config, cls):
        raise ConfigError(kind, f"expected a {cls.__name__} config, got {type(config).__name__}")
