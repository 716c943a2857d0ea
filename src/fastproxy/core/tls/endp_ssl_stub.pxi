# USERS' stand-in for ENGINE's endp_ssl (API14.md 1.) until tls-engine is merged: every
# connection is plaintext. Merging tls-engine removes this file and its include line in
# _core.pyx (ENGINE's core/tls/ defines the real one).

cdef inline void* endp_ssl(Endp* ep) noexcept nogil:
    return NULL
