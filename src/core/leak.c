/*
 * leak.c -- the leak report's entries: one per (type, creation site) of the
 * references that phase 2 released for an owner that had not, counting
 * those the owner still has not released.
 *
 * Entries are built by the phase 2 sweep (registry.c), attached, which reads
 * type names and resolves call sites then; they are raw memory, never
 * freed, so that a release from any thread at any later time -- a static
 * destructor after Py_Finalize included -- can uncount itself
 * (eg__leak_forget) and the report at the very end of the process
 * (report.c) can read them with no thread state.
 */
#include "core/leak.h"
#include "core/record.h"

#include <dlfcn.h>
#include <string.h>
#if defined(__GLIBC__)
#  include <link.h>     /* ElfW, dladdr1 */
#endif

/* The sweep's lookup table: open addressing on (type, site), plus the last
 * entry found (consecutive slots usually share one). */
typedef struct {
    size_t cap, n;
    eg__leak **slots;
    eg__leak *last;
} eg__leak_table;

static size_t
eg__leak_hash(const void *type, const void *site)
{
    uint64_t h = ((uint64_t)(uintptr_t)type >> 4)
               ^ ((uint64_t)(uintptr_t)site * 0x9E3779B97F4A7C15ull);
    return (size_t)(h ^ (h >> 29));
}

/* Attached.  The type's name as users write it: "module.Qualname" for
 * classes defined in Python or created by extensions at run time (their
 * tp_name lacks the module), tp_name for static types (it has it).  A
 * strdup'd string, or NULL. */
static char *
eg__type_name(PyTypeObject *type)
{
    char *out = NULL;
    if (PyType_HasFeature(type, Py_TPFLAGS_HEAPTYPE)) {
        PyObject *mod = PyObject_GetAttrString((PyObject *)type, "__module__");
        PyObject *qual = mod ? PyObject_GetAttrString((PyObject *)type,
                                                      "__qualname__") : NULL;
        const char *m = mod && PyUnicode_Check(mod) ? PyUnicode_AsUTF8(mod)
                                                    : NULL;
        const char *q = qual && PyUnicode_Check(qual)
                      ? PyUnicode_AsUTF8(qual) : NULL;
        if (q != NULL) {
            size_t len = strlen(q) + (m ? strlen(m) + 1 : 0) + 1;
            out = malloc(len);
            if (out != NULL) {
                if (m != NULL && strcmp(m, "builtins") != 0) {
                    snprintf(out, len, "%s.%s", m, q);
                }
                else {
                    snprintf(out, len, "%s", q);
                }
            }
        }
        Py_XDECREF(qual);
        Py_XDECREF(mod);
        PyErr_Clear();
    }
    return out != NULL ? out : strdup(type->tp_name);
}

/* Any thread.  Where `site` is: "PATH+0xOFFSET", with " (SYMBOL+0xOFF)"
 * when an exported symbol covers it (static functions are not in the
 * dynamic symbol table: addr2line -e PATH resolves the offset, minus one,
 * to a file and line when the library has debug information).  A strdup'd
 * string, or NULL. */
static char *
eg__site_name(void *site)
{
    char buf[1024];
    Dl_info info;
    if (site == NULL) {
        return NULL;
    }
#if defined(__GLIBC__)
    const ElfW(Sym) *sym = NULL;
    int found = dladdr1(site, &info, (void **)&sym, RTLD_DL_SYMENT) != 0;
#else
    int found = dladdr(site, &info) != 0;
#endif
    if (!found || info.dli_fname == NULL || !*info.dli_fname) {
        snprintf(buf, sizeof(buf), "%p", site);
        return strdup(buf);
    }
    uintptr_t off = (uintptr_t)site - (uintptr_t)info.dli_fbase;
    int covered = 0;
#if defined(__GLIBC__)
    covered = info.dli_sname != NULL && sym != NULL
        && (uintptr_t)site >= (uintptr_t)info.dli_saddr
        && (uintptr_t)site < (uintptr_t)info.dli_saddr + sym->st_size;
#endif
    if (covered) {
        snprintf(buf, sizeof(buf), "%s+0x%lx (%s+0x%lx)", info.dli_fname,
                 (unsigned long)off, info.dli_sname,
                 (unsigned long)((uintptr_t)site
                                 - (uintptr_t)info.dli_saddr));
    }
    else {
        snprintf(buf, sizeof(buf), "%s+0x%lx", info.dli_fname,
                 (unsigned long)off);
    }
    return strdup(buf);
}

static int
eg__leak_table_put(eg__leak_table *t, eg__leak *l)
{
    if ((t->n + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        eg__leak **slots = calloc(cap, sizeof(*slots));
        if (slots == NULL) {
            return -ENOMEM;
        }
        for (size_t i = 0; i < t->cap; i++) {
            eg__leak *o = t->slots[i];
            if (o != NULL) {
                size_t j = eg__leak_hash(o->type, o->site) & (cap - 1);
                while (slots[j] != NULL) {
                    j = (j + 1) & (cap - 1);
                }
                slots[j] = o;
            }
        }
        free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    size_t j = eg__leak_hash(l->type, l->site) & (t->cap - 1);
    while (t->slots[j] != NULL) {
        j = (j + 1) & (t->cap - 1);
    }
    t->slots[j] = l;
    t->n++;
    return 0;
}

/* The phase 2 sweep of reg's interpreter, attached (core/record.h). */
eg__leak *
eg__leak_entry(eg__registry *reg, void **cache, PyObject *obj, void *site)
{
    const void *type = Py_TYPE(obj);
    eg__leak_table *t = *cache;
    if (t == NULL) {
        t = *cache = calloc(1, sizeof(*t));
        if (t == NULL) {
            return &reg->leak_oom;
        }
    }
    if (t->last != NULL && t->last->type == type && t->last->site == site) {
        return t->last;
    }
    if (t->cap != 0) {
        size_t j = eg__leak_hash(type, site) & (t->cap - 1);
        for (eg__leak *o; (o = t->slots[j]) != NULL; j = (j + 1) & (t->cap - 1)) {
            if (o->type == type && o->site == site) {
                return t->last = o;
            }
        }
    }
    eg__leak *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return &reg->leak_oom;
    }
    l->type = type;             /* the table hashes these: set them first */
    l->site = site;
    if (eg__leak_table_put(t, l) < 0) {
        free(l);
        return &reg->leak_oom;
    }
    l->type_name = eg__type_name(Py_TYPE(obj));
    l->where = eg__site_name(site);
    l->next = atomic_load_explicit(&reg->leaks, memory_order_relaxed);
    /* Release: the report, on another thread, sees a complete entry. */
    atomic_store_explicit(&reg->leaks, l, memory_order_release);
    return t->last = l;
}

/* The sweep, when done: free its lookup table (the entries stay). */
void
eg__leak_cache_free(void *cache)
{
    eg__leak_table *t = cache;
    if (t != NULL) {
        free(t->slots);
        free(t);
    }
}

/* Any thread, no GIL (stats() and the report): the sum of the record's
 * entries' counts. */
uint64_t
eg__report_unreleased(eg__record *in)
{
    eg__registry *reg = &in->refs;
    uint64_t n = atomic_load_explicit(&reg->leak_oom.outstanding,
                                      memory_order_relaxed);
    for (eg__leak *l = atomic_load_explicit(&reg->leaks,
                                            memory_order_acquire);
         l != NULL; l = l->next) {
        n += atomic_load_explicit(&l->outstanding, memory_order_relaxed);
    }
    return n;
}

