/*
 * exitguard/version.h -- version numbers of the exitguard C API.
 *
 * EG_VERSION_* name the release.  EG_ABI_VERSION names the layout of the
 * function table exported through the "exitguard._C_API" capsule: it changes
 * only when a slot changes meaning or disappears, which never happens within
 * one ABI version (the table is append-only).  An extension compiled against
 * ABI N runs against any exitguard whose table has ABI N and is at least as
 * large as the table this header describes; eg_import() checks both.
 */
#ifndef EXITGUARD_VERSION_H
#define EXITGUARD_VERSION_H

#define EG_VERSION_MAJOR 0
#define EG_VERSION_MINOR 1
#define EG_VERSION_PATCH 0
#define EG_VERSION_STRING "0.1.0"

/* (MAJOR << 16) | (MINOR << 8) | PATCH, for preprocessor comparisons. */
#define EG_VERSION_HEX \
    ((EG_VERSION_MAJOR << 16) | (EG_VERSION_MINOR << 8) | EG_VERSION_PATCH)

/* The capsule table layout.  Bumped only on an incompatible change. */
#define EG_ABI_VERSION 1

#endif /* EXITGUARD_VERSION_H */
