/* leak_check.h: check_leaks() for Criterion tests under AddressSanitizer.
 *
 * Criterion ignores a leak report at process exit (and failures in .fini), so
 * under ASan a test body ends with a leak check of its own; elsewhere it does
 * nothing. Include after <criterion/criterion.h>. */
#ifndef SPUD_TEST_LEAK_CHECK_H
#define SPUD_TEST_LEAK_CHECK_H

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_LSAN 1
#endif
#endif
#ifdef HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

static inline void check_leaks(void) {
#ifdef HAVE_LSAN
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "memory leaked (see the report above)");
#endif
}

#endif
