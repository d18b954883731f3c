/*
 * server.h - lifecycle of one pinstack-cache server inside a process.
 *
 * Calling thread (Python's main thread, GIL released by the wrapper):
 *   cache_server_start()  validates settings, allocates the slab arena, hash
 *                          table and stats, binds the listen sockets, starts
 *                          the listener, the workers and the background
 *                          threads. Returns 0, or -1 with a message in err.
 *   cache_server_wait()   blocks up to timeout_ms; returns 1 once the server
 *                          has fully stopped, 0 on timeout (so the caller can
 *                          run Python signal handlers between waits).
 *   cache_server_stop()   async-signal-safe and callable from any thread:
 *                          asks every server thread to finish; connections
 *                          are closed and threads joined by the time
 *                          cache_server_wait() returns 1.
 *   cache_server_cleanup() frees what start allocated; only after wait()
 *                          returned 1. A process runs at most one server at a
 *                          time (the engine keeps global state, as memcached).
 */
#ifndef PS_CACHE_SERVER_H
#define PS_CACHE_SERVER_H

#include <stddef.h>
#include "settings.h"

/* Check a configuration without starting anything: 0, or -1 with a
 * message in err (the CLI calls it to report bad flags before starting). */
int settings_validate(const ps_settings *s, char *err, size_t errlen);
int cache_server_start(const ps_settings *s, char *err, size_t errlen);
int cache_server_wait(int timeout_ms);
void cache_server_stop(void);
void cache_server_cleanup(void);

/* The bound TCP port of the first listener (useful with -p 0 in tests). */
int cache_server_port(void);

/* Version string reported by the "version" command and "stats": memcached's
 * protocol level we follow, then ours. PS_PACKAGE_VERSION comes from setup.py
 * (-D), which reads it from src/pinstack/_version.py: one source of truth. */
#ifndef PS_PACKAGE_VERSION
#define PS_PACKAGE_VERSION "0.0.0-dev"
#endif
#define PS_CACHE_VERSION "1.6.18-pinstack-" PS_PACKAGE_VERSION

#endif
