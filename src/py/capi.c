/*
 * capi.c -- the C API table: the struct behind the capsule
 * exitguard._C_API, through which extensions built against exitguard.h
 * (eg_import) reach every public function.
 *
 * The table is constant and process-wide: every interpreter's module
 * exports the same one (eg_exec, module.c), and a consumer may call its
 * slots from any thread, each with the contract of the function it points
 * at (exitguard.h).  Its first fields are the ABI version and the struct's
 * size, which eg_import checks; slots are append-only and never reused, so
 * a new slot goes at the end of eg_capi and of this table (docs/api.md,
 * "Versions and the ABI rule").
 */
#include "py/py.h"
#include "base/platform.h"
#include "core/record.h"
#include "core/registry.h"
#include "core/gate.h"
#include "core/thread.h"
#include "core/stopper.h"
#include "core/completion.h"
#include "core/log.h"

/* ---- The C API table ------------------------------------------------------------ */

const eg_capi eg__capi = {
    .abi_version = EG_ABI_VERSION,
    .size = (uint32_t)sizeof(eg_capi),
    .version_hex = EG_VERSION_HEX,
    .reserved = 0,
    .ref_new = eg_ref_new,
    .ref_get = eg_ref_get,
    .ref_release = eg_ref_release,
    .decref = eg_decref,
    .flush = eg_flush,
    .stopper_add = eg_stopper_add,
    .stopper_after = eg_stopper_after,
    .stopper_remove = eg_stopper_remove,
    .strerror = eg_strerror,
    .interp_current = eg_interp_current,
    .interp_main = eg_interp_main,
    .interp_close = eg_interp_close,
    .gil_ensure = eg_gil_ensure,
    .gil_release = eg_gil_release,
    .thread_start = eg_thread_start,
    .thread_join = eg_thread_join,
    .thread_stop_requested = eg_thread_stop_requested,
    .thread_adopt = eg_thread_adopt,
    .vlog = eg_vlog,
    .log_enabled = eg_log_enabled,
    .log_site_enabled = eg_log_site_enabled,
    .log_generation = (const unsigned int *)&eg__log_generation,
    .event_new = eg_event_new,
    .event_free = eg_event_free,
    .event_set = eg_event_set,
    .event_clear = eg_event_clear,
    .event_is_set = eg_event_is_set,
    .event_wait = eg_event_wait,
    .event_fileno = eg_event_fileno,
    .cq_from_object = eg_cq_from_object,
    .cq_post = eg_cq_post,
    .cq_post_future = eg_cq_post_future,
};
